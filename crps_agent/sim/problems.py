"""The simulator's problem types: templated arithmetic word problems with computed answers.

Each `ProblemType` has a template (its prompt text, `{slot}` fields), a parameter sampler,
the pitfalls it is prone to, and a solver `solve(params, mistake)` that returns the worked
steps and the answer — correct for `mistake=None`, the pitfall's typical wrong reasoning
otherwise. Steps before a mistake are identical to the correct ones, so a failed and a
successful attempt part exactly at the step where the pitfall bites.

Part of the simulator's ground truth: only crps_agent/sim/* may import this module.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Params = dict[str, Any]
Solver = Callable[[Params, str | None], tuple[list[str], float]]

NAMES = ("Maria", "James", "Aisha", "Tom", "Lena", "Ravi", "Sofia", "Omar", "Emma", "Jonas",
         "Priya", "Diego")
ITEMS = ("jacket", "lamp", "bicycle", "chair", "watch", "backpack", "kettle", "guitar")
GOODS = ("bolts", "bottles", "cards", "labels", "buttons", "cups")


def fmt(x: float, places: int = 2) -> str:
    """A number as a person writes it: no trailing zeros, at most `places` decimals."""
    r = round(x, places)
    if r == int(r):
        return str(int(r))
    return f"{r:.{places}f}".rstrip("0").rstrip(".")


def nice(x: float) -> bool:
    """A positive answer with at most two decimals (what a reference can state exactly)."""
    return x > 0 and math.isfinite(x) and abs(round(x, 2) - x) < 1e-9


@dataclass(frozen=True)
class ProblemType:
    name: str
    pitfalls: tuple[str, ...]
    template: str
    draw: Callable[[random.Random], Params]
    solve: Solver
    words: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def render(self, params: Params) -> str:
        return self.template.format(**{k: fmt(v) if isinstance(v, int | float) else v
                                       for k, v in params.items()})

    def pattern(self) -> re.Pattern[str]:
        """The template as a regex whose named groups give back the parameters."""
        out, seen, pos = [], set(), 0
        for m in re.finditer(r"\{(\w+)\}", self.template):
            out.append(r"\s+".join(re.escape(w) for w in self.template[pos:m.start()]
                                   .split(" ")))
            slot = m.group(1)
            if slot in seen:
                out.append(f"(?P={slot})")
            elif slot in self.words:
                out.append(f"(?P<{slot}>{'|'.join(map(re.escape, self.words[slot]))})")
            else:
                out.append(rf"(?P<{slot}>\d+(?:\.\d+)?)")
            seen.add(slot)
            pos = m.end()
        out.append(r"\s+".join(re.escape(w) for w in self.template[pos:].split(" ")))
        return re.compile("".join(out), re.IGNORECASE)

    def parse(self, text: str) -> Params | None:
        m = self.pattern().fullmatch(text)
        if m is None:
            return None
        params: Params = {}
        for key, value in m.groupdict().items():
            if key in self.words:
                params[key] = next(w for w in self.words[key] if w.lower() == value.lower())
            else:
                num = float(value)
                params[key] = int(num) if num.is_integer() else num
        return params


# --- percentages ---------------------------------------------------------------------------

def solve_double_discount(p: Params, m: str | None) -> tuple[list[str], float]:
    price, d1, d2 = p["price"], p["d1"], p["d2"]
    steps = [f"The {p['item']} starts at ${fmt(price)}, with {d1}% off and then a further "
             f"{d2}% off."]
    if m == "stacked_percent":
        total = d1 + d2
        ans = price * (1 - total / 100)
        steps += [f"Together the discounts are {d1}% + {d2}% = {total}%.",
                  f"{total}% of ${fmt(price)} is ${fmt(price * total / 100)}, so the price is "
                  f"${fmt(price)} - ${fmt(price * total / 100)} = ${fmt(ans)}."]
        return steps, ans
    after = price * (1 - d1 / 100)
    ans = after * (1 - d2 / 100)
    steps += [f"The first discount is {d1}% of ${fmt(price)} = ${fmt(price * d1 / 100)}, "
              f"leaving ${fmt(after)}.",
              f"The second discount is {d2}% of ${fmt(after)} = ${fmt(after * d2 / 100)}, "
              f"leaving ${fmt(after)} - ${fmt(after * d2 / 100)} = ${fmt(ans)}."]
    return steps, ans


def solve_reverse_discount(p: Params, m: str | None) -> tuple[list[str], float]:
    sale, d = p["sale"], p["d"]
    steps = [f"The sale price ${fmt(sale)} is what is left after {d}% was taken off."]
    if m == "percent_base":
        back = sale * d / 100
        ans = sale + back
        steps += [f"Adding back {d}% of ${fmt(sale)} gives ${fmt(back)}.",
                  f"The original price was ${fmt(sale)} + ${fmt(back)} = ${fmt(ans)}."]
        return steps, ans
    ans = sale / (1 - d / 100)
    steps += [f"So ${fmt(sale)} is {100 - d}% of the original price.",
              f"The original price was ${fmt(sale)} / {fmt(1 - d / 100, 4)} = ${fmt(ans)}."]
    return steps, ans


def solve_raise_then_cut(p: Params, m: str | None) -> tuple[list[str], float]:
    final, a, b = p["final"], p["a"], p["b"]
    steps = [f"The price rose by {a}%, then fell by {b}%, and ended at ${fmt(final)}."]
    if m == "stacked_percent":
        net = a - b
        ans = final / (1 + net / 100)
        steps += [f"The net change is {a}% - {b}% = {net}%, a factor of "
                  f"{fmt(1 + net / 100, 4)}.",
                  f"The starting price was ${fmt(final)} / {fmt(1 + net / 100, 4)} = "
                  f"${fmt(ans)}."]
        return steps, ans
    if m == "percent_base":
        undo_cut = final * (1 + b / 100)
        ans = undo_cut * (1 - a / 100)
        steps += [f"Undo the cut by adding {b}% of ${fmt(final)}: ${fmt(undo_cut)}.",
                  f"Undo the raise by taking off {a}%: ${fmt(undo_cut)} x {fmt(1 - a / 100, 4)}"
                  f" = ${fmt(ans)}."]
        return steps, ans
    factor = (1 + a / 100) * (1 - b / 100)
    ans = final / factor
    steps += [f"The raise multiplies the price by {fmt(1 + a / 100, 4)} and the cut by "
              f"{fmt(1 - b / 100, 4)}, so overall by {fmt(factor, 4)}.",
              f"The starting price was ${fmt(final)} / {fmt(factor, 4)} = ${fmt(ans)}."]
    return steps, ans


def solve_compound(p: Params, m: str | None) -> tuple[list[str], float]:
    dep, r, n = p["deposit"], p["rate"], p["years"]
    steps = [f"The balance starts at ${fmt(dep)} and earns {r}% a year for {n} years."]
    if m == "stacked_percent":
        interest = dep * r * n / 100
        ans = dep + interest
        steps += [f"Over {n} years the interest is {n} x {r}% = {n * r}% of ${fmt(dep)}, "
                  f"which is ${fmt(interest)}.",
                  f"The balance is ${fmt(dep)} + ${fmt(interest)} = ${fmt(ans)}."]
        return steps, ans
    bal = float(dep)
    for year in range(1, n + 1):
        new = bal * (1 + r / 100)
        steps.append(f"After year {year}: ${fmt(bal)} x {fmt(1 + r / 100, 4)} = ${fmt(new)}.")
        bal = new
    return steps, bal


def solve_profit(p: Params, m: str | None) -> tuple[list[str], float]:
    cost, sell = p["cost"], p["sell"]
    profit = sell - cost
    steps = [f"The profit is ${fmt(sell)} - ${fmt(cost)} = ${fmt(profit)}."]
    base = sell if m == "percent_base" else cost
    ans = profit / base * 100
    steps.append(f"As a percentage: {fmt(profit)} / {fmt(base)} x 100 = {fmt(ans)}%.")
    return steps, ans


# --- rates and units -----------------------------------------------------------------------

def solve_round_trip(p: Params, m: str | None) -> tuple[list[str], float]:
    d, v1, v2 = p["d"], p["v1"], p["v2"]
    t1, t2 = d / v1, d / v2
    steps = [f"Going takes {d} / {v1} = {fmt(t1)} h and returning takes {d} / {v2} = "
             f"{fmt(t2)} h."]
    if m == "average_rates":
        ans = (v1 + v2) / 2
        steps.append(f"The average speed is the mean of the two speeds: ({v1} + {v2}) / 2 = "
                     f"{fmt(ans)} km/h.")
        return steps, ans
    ans = 2 * d / (t1 + t2)
    steps += [f"The whole trip is {2 * d} km in {fmt(t1 + t2)} h.",
              f"The average speed is {2 * d} / {fmt(t1 + t2)} = {fmt(ans)} km/h."]
    return steps, ans


def solve_two_leg(p: Params, m: str | None) -> tuple[list[str], float]:
    d1, v1, mins, v2 = p["d1"], p["v1"], p["mins"], p["v2"]
    t1 = d1 / v1
    steps = [f"The first part takes {d1} / {v1} = {fmt(t1)} h."]
    if m == "average_rates":
        ans = (v1 + v2) / 2
        steps.append(f"The average speed is the mean of the speeds: ({v1} + {v2}) / 2 = "
                     f"{fmt(ans)} km/h.")
        return steps, ans
    t2 = mins if m == "unit_mismatch" else mins / 60
    d2 = v2 * t2
    steps.append(f"The second part lasts {fmt(t2)} h and covers {v2} x {fmt(t2)} = {fmt(d2)} km."
                 if m is None else f"The second part lasts {mins} h and covers {v2} x {mins} "
                 f"= {fmt(d2)} km.")
    ans = (d1 + d2) / (t1 + t2)
    steps += [f"In total {fmt(d1 + d2)} km in {fmt(t1 + t2)} h.",
              f"The average speed is {fmt(d1 + d2)} / {fmt(t1 + t2)} = {fmt(ans)} km/h."]
    return steps, ans


def solve_machine(p: Params, m: str | None) -> tuple[list[str], float]:
    k, h = p["k"], p["hours"]
    steps = [f"The machine runs for {h} hours at {k} {p['goods']} per minute."]
    if m == "unit_mismatch":
        ans = k * h
        steps.append(f"It makes {k} x {h} = {fmt(ans)} {p['goods']}.")
        return steps, ans
    ans = k * h * 60
    steps += [f"{h} hours is {h} x 60 = {h * 60} minutes.",
              f"It makes {k} x {h * 60} = {fmt(ans)} {p['goods']}."]
    return steps, ans


def solve_length_sum(p: Params, m: str | None) -> tuple[list[str], float]:
    a, b = p["a"], p["b"]
    steps = [f"One ribbon is {a} m and the other is {b} cm."]
    if m == "unit_mismatch":
        ans = a + b
        steps.append(f"Together they are {a} + {b} = {fmt(ans)} cm.")
        return steps, ans
    ans = a * 100 + b
    steps += [f"{a} m is {a} x 100 = {a * 100} cm.",
              f"Together they are {a * 100} + {b} = {fmt(ans)} cm."]
    return steps, ans


def solve_tiles(p: Params, m: str | None) -> tuple[list[str], float]:
    w, ln, s, k = p["w"], p["l"], p["s"], p["k"]
    area = w * ln
    steps = [f"The floor is {w} x {ln} = {area} square metres."]
    if m == "unit_mismatch":
        tiles = area * 100 / (s * s)
        steps.append(f"A tile is {s} x {s} = {s * s} square cm, and a square metre is 100 "
                     f"square cm, so {area} x 100 / {s * s} = {fmt(tiles)} tiles.")
    else:
        tiles = area * 10000 / (s * s)
        steps.append(f"A tile is {s} x {s} = {s * s} square cm, and a square metre is 10000 "
                     f"square cm, so {area} x 10000 / {s * s} = {fmt(tiles)} tiles.")
    if m == "round_up":
        ans = float(math.floor(tiles / k))
        steps.append(f"{fmt(tiles)} / {k} = {fmt(tiles / k)}, so {fmt(ans)} boxes.")
        return steps, ans
    ans = float(math.ceil(tiles / k - 1e-9))
    steps.append(f"{fmt(tiles)} / {k} = {fmt(tiles / k)}; a partial box still has to be "
                 f"bought, so {fmt(ans)} boxes.")
    return steps, ans


# --- counting ------------------------------------------------------------------------------

def _gaps_plus_one(first: str, gaps: float, what: str, m: str | None) -> tuple[list[str],
                                                                             float]:
    if m == "fence_post":
        return [first, f"So there are {fmt(gaps)} {what}."], gaps
    return [first, f"There is one more {what[:-1]} than gaps: {fmt(gaps)} + 1 = "
                   f"{fmt(gaps + 1)} {what}."], gaps + 1


def solve_fence(p: Params, m: str | None) -> tuple[list[str], float]:
    gaps = p["length"] / p["gap"]
    return _gaps_plus_one(f"The fence has {p['length']} / {p['gap']} = {fmt(gaps)} gaps "
                          "between posts.", gaps, "posts", m)


def solve_pages(p: Params, m: str | None) -> tuple[list[str], float]:
    diff = p["last"] - p["first"]
    return _gaps_plus_one(f"From page {p['first']} to page {p['last']} the difference is "
                          f"{p['last']} - {p['first']} = {diff}.", diff, "pages", m)


def solve_bell(p: Params, m: str | None) -> tuple[list[str], float]:
    per_hour = 100 if m == "unit_mismatch" else 60
    mins = p["hours"] * per_hour
    gaps = mins / p["every"]
    first = (f"The event lasts {p['hours']} x {per_hour} = {mins} minutes, which is "
             f"{mins} / {p['every']} = {fmt(gaps)} intervals.")
    return _gaps_plus_one(first, gaps, "rings", None if m == "unit_mismatch" else m)


def solve_buses(p: Params, m: str | None) -> tuple[list[str], float]:
    n, c = p["n"], p["cap"]
    steps = [f"{n} / {c} = {fmt(n / c)} buses' worth of students."]
    if m == "round_up":
        ans = float(n // c)
        steps.append(f"So {fmt(ans)} buses are needed.")
        return steps, ans
    ans = float(-(-n // c))
    steps.append(f"The remaining students still need a bus, so {fmt(ans)} buses are needed.")
    return steps, ans


# --- ages ----------------------------------------------------------------------------------

def solve_ages_sum(p: Params, m: str | None) -> tuple[list[str], float]:
    s, k, n = p["total"], p["kids"], p["years"]
    steps = [f"The {k} children's ages add up to {s} now."]
    if m == "both_age":
        ans = s + n
        steps.append(f"In {n} years the sum is {s} + {n} = {fmt(ans)}.")
        return steps, ans
    ans = s + k * n
    steps += [f"Each of the {k} children gets {n} years older, adding {k} x {n} = {k * n}.",
              f"The sum will be {s} + {k * n} = {fmt(ans)}."]
    return steps, ans


def solve_ages_ratio(p: Params, m: str | None) -> tuple[list[str], float]:
    x, y = p["x"], p["y"]
    steps = [f"Let t be the number of years; {p['name']} will then be {x} + t."]
    if m == "both_age":
        ans = (x - 2 * y) / 2
        steps += [f"We need {x} = 2 x ({y} + t), so {x} = {2 * y} + 2t.",
                  f"t = ({x} - {2 * y}) / 2 = {fmt(ans)}."]
        return steps, ans
    ans = float(x - 2 * y)
    steps += [f"{p['name2']} will be {y} + t, and {x} + t = 2 x ({y} + t) = {2 * y} + 2t.",
              f"t = {x} - {2 * y} = {fmt(ans)}."]
    return steps, ans


# --- work ----------------------------------------------------------------------------------

def _together(a: float, b: float, unit: str, m: str | None, first: str) -> tuple[list[str],
                                                                                float]:
    if m == "combine_rates":
        ans = (a + b) / 2
        return [first, f"Together it takes the average of the times: ({fmt(a)} + {fmt(b)}) "
                       f"/ 2 = {fmt(ans)} {unit}."], ans
    ans = a * b / (a + b)
    return [first, f"Together they do 1/{fmt(a)} + 1/{fmt(b)} = {fmt(1 / a + 1 / b, 4)} of "
                   f"the job per {unit[:-1]}.",
            f"The time is 1 / {fmt(1 / a + 1 / b, 4)} = {fmt(ans)} {unit}."], ans


def solve_work(p: Params, m: str | None) -> tuple[list[str], float]:
    return _together(p["a"], p["b"], "hours", m, f"{p['name']} takes {p['a']} hours and "
                     f"{p['name2']} takes {p['b']} hours for the whole fence.")


def solve_pumps(p: Params, m: str | None) -> tuple[list[str], float]:
    a = p["hours"] if m == "unit_mismatch" else p["hours"] * 60
    first = (f"The first pump takes {p['hours']} hours, that is {a} minutes; the second takes "
             f"{p['mins']} minutes.")
    return _together(a, p["mins"], "minutes", None if m == "unit_mismatch" else m, first)


def solve_pipes(p: Params, m: str | None) -> tuple[list[str], float]:
    a, b = p["fill"], p["drain"]
    steps = [f"The inlet fills the pool in {a} hours and the drain empties it in {b} hours."]
    if m == "combine_rates":
        ans = float(b - a)
        steps.append(f"The difference of the times is {b} - {a} = {fmt(ans)} hours.")
        return steps, ans
    net = 1 / a - 1 / b
    ans = 1 / net
    steps += [f"The net rate is 1/{a} - 1/{b} = {fmt(net, 4)} of the pool per hour.",
              f"The time is 1 / {fmt(net, 4)} = {fmt(ans)} hours."]
    return steps, ans


# --- weighted averages ---------------------------------------------------------------------

def _mean_of_two(a: float, b: float, unit: str) -> tuple[str, float]:
    ans = (a + b) / 2
    return f"The mean of {fmt(a)} and {fmt(b)} is {fmt(ans)}{unit}.", ans


def solve_mixture(p: Params, m: str | None) -> tuple[list[str], float]:
    x, pc, y, q = p["x"], p["p"], p["y"], p["q"]
    steps = [f"There are {x} litres at {pc}% and {y} litres at {q}%."]
    if m == "weighted_average":
        line, ans = _mean_of_two(pc, q, "%")
        return [*steps, line], ans
    salt = x * pc / 100 + y * q / 100
    ans = salt / (x + y) * 100
    return [*steps, f"Salt: {x} x {pc}/100 + {y} x {q}/100 = {fmt(salt)} litres.",
            f"Concentration: {fmt(salt)} / {x + y} x 100 = {fmt(ans)}%."], ans


def solve_classes(p: Params, m: str | None) -> tuple[list[str], float]:
    n1, a1, n2, a2 = p["n1"], p["a1"], p["n2"], p["a2"]
    steps = [f"One class has {n1} students averaging {a1}, the other {n2} averaging {a2}."]
    if m == "weighted_average":
        line, ans = _mean_of_two(a1, a2, " points")
        return [*steps, line], ans
    total = n1 * a1 + n2 * a2
    ans = total / (n1 + n2)
    return [*steps, f"Total points: {n1} x {a1} + {n2} x {a2} = {fmt(total)}.",
            f"Average: {fmt(total)} / {n1 + n2} = {fmt(ans)}."], ans


def solve_new_average(p: Params, m: str | None) -> tuple[list[str], float]:
    n, a, s = p["n"], p["avg"], p["score"]
    steps = [f"{p['name']} has {n} tests averaging {a} and then scores {s}."]
    if m == "weighted_average":
        line, ans = _mean_of_two(a, s, "")
        return [*steps, line], ans
    total = n * a + s
    ans = total / (n + 1)
    return [*steps, f"The total is {n} x {a} + {s} = {fmt(total)}.",
            f"The new average is {fmt(total)} / {n + 1} = {fmt(ans)}."], ans
