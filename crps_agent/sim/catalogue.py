"""The simulator's note catalogue: per pitfall, what the mistake is, a remark a clean
solution makes at the key step, and paraphrased helpful notes; platitudes; harmful rules
(plausible advice that states a pitfall's wrong reasoning as a rule).

Part of the simulator's ground truth: only crps_agent/sim/* may import this module.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pitfall:
    id: str
    mistake: str  # the failure mode, stated generally
    success: str  # what a correct attempt does instead
    remark: str  # a clean solution's aside at the key step (no meta language)
    notes: tuple[str, ...]  # paraphrased helpful notes, >= MAX_PARAPHRASES
    harmful: tuple[str, ...]  # rules stating the mistake as advice


PITFALLS: dict[str, Pitfall] = {p.id: p for p in (
    Pitfall(
        "stacked_percent",
        "added successive percentage changes as if they all applied to the same base",
        "applied each percentage change to the amount left by the previous change",
        "the changes compound, so each percentage acts on the amount after the previous one",
        ("Successive percentage changes compound: apply each one to the amount left after the "
         "previous change instead of adding the percentages.",
         "Never add the percentages of consecutive discounts, raises or interest periods; "
         "multiply the factors of each change in turn.",
         "When one percentage change follows another, the second acts on the already changed "
         "amount, so chain the multipliers.",
         "Chained percent increases or decreases multiply rather than sum; convert each to a "
         "factor and take their product.",
         "Treat repeated percentage growth or reduction as compounding: every period works on "
         "the new total, not on the starting value."),
        ("Combine consecutive discounts or raises by adding their percentages and applying "
         "the total once to the original amount.",
         "For interest over several years, multiply the yearly rate by the number of years "
         "and apply it to the deposit.")),
    Pitfall(
        "percent_base",
        "took the percentage of the wrong base amount",
        "identified which amount the percentage refers to and used that base",
        "the percentage refers to the original amount, so divide by the factor",
        ("A percentage is always relative to a specific base; identify which quantity is the "
         "whole, such as the original price or the cost, before computing.",
         "To undo a percentage change, divide by its factor; adding back the same percent of "
         "the changed value gives the wrong original.",
         "Check what the percent is measured against: profit percentages use the cost, "
         "discounts use the price before the discount.",
         "Reversing a discount or raise means dividing the final amount by the multiplier, "
         "because the percent referred to the original base.",
         "Before using a percentage, name its base explicitly; taking the percent of the "
         "final value instead of the starting one is a common slip."),
        ("To recover an amount from before a percentage change, apply that same percentage "
         "to the amount after it and add or subtract it.",
         "State profit as a share of the selling price, since that is the money actually "
         "received.")),
    Pitfall(
        "average_rates",
        "averaged the speeds instead of dividing total distance by total time",
        "divided the total distance by the total time",
        "the average speed is total distance over total time",
        ("Average speed equals total distance divided by total time; never simply average "
         "the speeds of the separate parts.",
         "When legs of a trip take different times, the overall rate is the whole distance "
         "over the whole duration, not the mean of the rates.",
         "Do not take the arithmetic mean of two speeds; compute the time of each leg and "
         "divide the total distance by the summed time.",
         "For an average rate over several segments, add up distances and times separately, "
         "then divide; slower segments last longer and weigh more.",
         "The mean of the speeds is wrong for average speed because more time is spent going "
         "slowly; use total distance over total time."),
        ("A journey made of two stretches has an overall speed halfway between the two "
         "speeds driven.",)),
    Pitfall(
        "unit_mismatch",
        "combined quantities given in different units without converting them",
        "converted every quantity to one unit before combining",
        "all quantities are first written in the same unit",
        ("Convert every quantity to one common unit, such as minutes or centimetres, before "
         "adding, multiplying or comparing them.",
         "Check the units of each number: hours and minutes, or metres and centimetres, "
         "cannot be combined until they are converted.",
         "Mixed units are a trap; rewrite all measurements in the unit the question asks "
         "for before doing any arithmetic.",
         "Before calculating, write the unit next to every number and convert so that they "
         "all match.",
         "An answer requested in one unit needs all inputs expressed in that unit first; an "
         "hour has sixty minutes and a metre has a hundred centimetres."),
        ("Keep numbers in the units they are given in; converting only adds steps where "
         "errors creep in.",)),
    Pitfall(
        "fence_post",
        "counted the gaps instead of the points at both ends",
        "counted the boundary points, one more than the gaps",
        "the count includes both ends, one more than the number of gaps",
        ("When counting posts, rings or pages including both ends, the count is the number "
         "of gaps plus one.",
         "Inclusive ranges contain one more item than the difference of their endpoints; "
         "remember to add one.",
         "Distinguish intervals from the points that bound them: n equal gaps have n plus one "
         "boundary points.",
         "For counts that include the first and the last item, subtracting the endpoints "
         "misses one; add it back.",
         "Fence-post problems: markers placed at both ends outnumber the spaces between them "
         "by exactly one."),
        ("The size of a range is its last number minus its first; adding one would count an "
         "endpoint twice.",)),
    Pitfall(
        "round_up",
        "rounded a count of containers down and left the remainder without one",
        "rounded the number of containers up to cover the remainder",
        "a partial container still has to be counted, so round up",
        ("When every group needs a whole container, such as a bus or a box, round the "
         "division up; a partial group still needs one more.",
         "Leftovers after dividing still need their own bus, box or can, so take the ceiling "
         "rather than dropping the remainder.",
         "Never round down a count of containers needed: if the division leaves a remainder, "
         "add one whole container.",
         "Ask whether a remainder can be ignored; for vehicles, boxes or cans it cannot, so "
         "round up to the next whole number.",
         "A fractional number of containers means one more full container must be bought or "
         "used."),
        ("Vehicles or packs required equal the whole-number part of the quotient; a small "
         "leftover can be dropped.",)),
    Pitfall(
        "both_age",
        "shifted only one person's age when time passed",
        "added the elapsed years to every person's age",
        "every person gets older by the same number of years",
        ("As time passes every person gets older by the same number of years; shift all "
         "ages, not just one of them.",
         "In age problems add the elapsed years to each person's age, and for a group add "
         "them once per person.",
         "Write each person's future or past age as current age plus or minus the years, "
         "then set up the relation.",
         "Age differences stay constant over time while ratios change; update every age "
         "before comparing.",
         "When a question looks years ahead or back, apply the shift to every age involved, "
         "including sums over several people."),
        ("Only the age of the person the question is about changes; keep the others at their "
         "current ages.",)),
    Pitfall(
        "combine_rates",
        "added or averaged completion times instead of adding rates",
        "added the rates of the workers and inverted the sum",
        "the rates add, so the time is the reciprocal of the summed rate",
        ("Combine workers or pipes by adding their rates, jobs per hour, and then invert; "
         "never add or average the times.",
         "Convert each completion time into a rate, one over the time, sum the rates, and "
         "take the reciprocal.",
         "For joint work, the fractions of the job done per hour add up; times themselves do "
         "not add.",
         "A drain subtracts its emptying rate from the filling rate; compute the net rate "
         "before finding the time.",
         "Working together is faster than either alone, so averaging the individual times "
         "cannot be right; sum the rates instead."),
        ("When two workers or pipes act together, the job takes the average of their "
         "individual times.",)),
    Pitfall(
        "weighted_average",
        "took the plain mean of averages from groups of different sizes",
        "weighted each group by its size and divided totals by totals",
        "each group counts in proportion to its size",
        ("When combining groups of different sizes, weight each average or concentration by "
         "its amount; do not average the averages.",
         "An overall average is the total of all values divided by the total count, so "
         "compute the totals first.",
         "Mixing solutions: total solute divided by total volume gives the concentration, "
         "not the mean of the percentages.",
         "A new average after adding one value uses the old total, count times average, plus "
         "the new value, divided by the new count.",
         "Averages of unequal groups need weights; the simple mean of two averages only works "
         "when the groups are the same size."),
        ("Merging the results of two groups gives a figure halfway between them, whatever "
         "the group sizes.",)),
)}

PLATITUDES: tuple[str, ...] = (
    "Double-check your work before giving the final answer.",
    "Read the problem carefully and make sure you understand what is being asked.",
    "Break the problem into smaller parts and solve each one in turn.",
    "Stay organized and write down every intermediate result clearly.",
    "Verify the arithmetic carefully to avoid careless slips.",
    "Take your time and think logically about the problem.",
    "Make sure the final answer actually answers the question.",
    "Keep track of all the given information.",
    "Reason one step at a time and be precise.",
    "Simplify the problem as much as possible before solving it.",
)

# LaTeX a model puts in JSON strings without escaping its backslashes; each contains an
# escape JSON rejects (\s, \c, \d, \l), some also one JSON silently misreads (\f, \t).
LATEX_SNIPPETS: tuple[str, ...] = (
    r"\frac{part}{whole} \cdot 100",
    r"\sqrt{x}",
    r"\dfrac{a}{b}",
    r"\left( 1 - \frac{p}{100} \right)",
    r"x \cdot \frac{1}{t}",
    r"\text{total} \div \text{count}",
)
