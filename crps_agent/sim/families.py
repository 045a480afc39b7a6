"""The simulator's problem families: a parameter sampler and a template per problem type,
with the pitfalls each type is prone to (`TYPES`). Similar types share pitfalls
(percentages, units, counting, rates, averages), as in real task families.

Part of the simulator's ground truth: only crps_agent/sim/* may import this module.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from crps_agent.sim.problems import (
    GOODS,
    ITEMS,
    NAMES,
    Params,
    ProblemType,
    Solver,
    solve_ages_ratio,
    solve_ages_sum,
    solve_bell,
    solve_buses,
    solve_classes,
    solve_compound,
    solve_double_discount,
    solve_fence,
    solve_length_sum,
    solve_machine,
    solve_mixture,
    solve_new_average,
    solve_pages,
    solve_pipes,
    solve_profit,
    solve_pumps,
    solve_raise_then_cut,
    solve_reverse_discount,
    solve_round_trip,
    solve_tiles,
    solve_two_leg,
    solve_work,
)


def _names(rng: random.Random) -> Params:
    a, b = rng.sample(NAMES, 2)
    return {"name": a, "name2": b}


def _pick(rng: random.Random, **choices: Any) -> Params:
    return {k: rng.choice(v) if isinstance(v, list | tuple | range) else v
            for k, v in choices.items()}


def _d_double(r: random.Random) -> Params:
    return {**_pick(r, price=range(40, 401, 10), d1=(10, 15, 20, 25, 30),
                    d2=(5, 10, 15, 20)), "item": r.choice(ITEMS), "name": r.choice(NAMES)}


def _d_reverse(r: random.Random) -> Params:
    orig, d = r.choice(range(20, 501, 20)), r.choice((10, 20, 25, 40, 50))
    return {"sale": orig * (100 - d) / 100, "d": d, "item": r.choice(ITEMS)}


def _d_raise_cut(r: random.Random) -> Params:
    orig, a, b = r.choice(range(20, 401, 20)), r.choice((10, 20, 25, 50)), r.choice(
        (10, 20, 25, 40))
    return {"final": orig * (100 + a) * (100 - b) / 10000, "a": a, "b": b,
            "item": r.choice(ITEMS)}


def _d_compound(r: random.Random) -> Params:
    return {**_pick(r, deposit=range(100, 5001, 100), rate=(2, 4, 5, 10, 20),
                    years=(2, 3)), "name": r.choice(NAMES)}


def _d_profit(r: random.Random) -> Params:
    cost, pct = r.choice(range(20, 401, 10)), r.choice((10, 20, 25, 40, 50, 60, 75))
    return {"cost": cost, "sell": cost * (100 + pct) / 100, "name": r.choice(NAMES),
            "item": r.choice(ITEMS)}


def _d_round_trip(r: random.Random) -> Params:
    v1, v2 = r.choice(((30, 60), (40, 60), (60, 90), (20, 30), (45, 90), (36, 45), (50, 75),
                       (40, 120), (60, 120), (60, 40), (90, 60), (30, 20)))
    return {"d": r.choice((60, 90, 120, 180, 240, 360)), "v1": v1, "v2": v2,
            "name": r.choice(NAMES)}


def _d_two_leg(r: random.Random) -> Params:
    return {**_pick(r, d1=range(6, 31, 3), v1=(12, 15, 18, 20, 24, 30),
                    mins=(15, 20, 30, 40, 45, 60, 90), v2=(10, 12, 15, 20, 24, 30)),
            "name": r.choice(NAMES)}


def _d_machine(r: random.Random) -> Params:
    return {**_pick(r, k=range(3, 40), hours=range(2, 9)), "goods": r.choice(GOODS)}


def _d_length(r: random.Random) -> Params:
    return {**_pick(r, a=range(2, 10), b=range(15, 95, 5)), "name": r.choice(NAMES)}


def _d_tiles(r: random.Random) -> Params:
    return _pick(r, w=range(2, 9), l=range(2, 9), s=(20, 25, 50), k=(6, 8, 12, 15, 18, 24))


def _d_fence(r: random.Random) -> Params:
    gap = r.choice((2, 3, 4, 5, 6))
    return {"gap": gap, "length": gap * r.choice(range(5, 40))}


def _d_pages(r: random.Random) -> Params:
    first = r.choice(range(5, 120))
    return {"first": first, "last": first + r.choice(range(8, 90)), "name": r.choice(NAMES)}


def _d_bell(r: random.Random) -> Params:
    return _pick(r, every=(5, 10, 12, 15, 20, 30), hours=range(2, 7))


def _d_buses(r: random.Random) -> Params:
    return _pick(r, n=range(45, 400), cap=(20, 24, 30, 35, 40, 45, 50))


def _d_ages_sum(r: random.Random) -> Params:
    kids = r.choice((2, 3, 4))
    return {"kids": kids, "total": r.choice(range(6 * kids, 14 * kids)),
            "years": r.choice(range(3, 16)), "name": r.choice(NAMES)}


def _d_ages_ratio(r: random.Random) -> Params:
    y, t = r.choice(range(4, 16)), r.choice(range(2, 13))
    return {**_names(r), "x": 2 * y + t, "y": y}


def _d_work(r: random.Random) -> Params:
    a, b = r.choice(((3, 6), (4, 12), (6, 12), (2, 3), (4, 6), (5, 20), (10, 15), (6, 3),
                     (12, 4), (2, 8), (3, 12), (6, 9)))
    return {**_names(r), "a": a, "b": b}


def _d_pumps(r: random.Random) -> Params:
    return {**_pick(r, hours=(1, 2, 3), mins=(20, 30, 40, 60, 90, 120, 180)),
            "name": r.choice(NAMES)}


def _d_pipes(r: random.Random) -> Params:
    a, b = r.choice(((2, 3), (3, 6), (4, 12), (2, 6), (3, 4), (4, 6), (6, 10), (4, 5),
                     (2, 4), (6, 12)))
    return {"fill": a, "drain": b}


def _d_mixture(r: random.Random) -> Params:
    x, y = r.sample((2, 3, 4, 5, 6, 8, 10), 2)
    p, q = r.sample((5, 10, 15, 20, 25, 30, 40), 2)
    return {"x": x, "p": p, "y": y, "q": q}


def _d_classes(r: random.Random) -> Params:
    n1, n2 = r.sample((10, 12, 15, 20, 24, 25, 30), 2)
    a1, a2 = r.sample(range(60, 96), 2)
    return {"n1": n1, "a1": a1, "n2": n2, "a2": a2}


def _d_new_average(r: random.Random) -> Params:
    return {**_pick(r, n=range(2, 10), avg=range(60, 95), score=range(50, 101)),
            "name": r.choice(NAMES)}


_W = {"name": NAMES, "name2": NAMES, "item": ITEMS, "goods": GOODS}


def _t(name: str, pitfalls: tuple[str, ...], template: str, draw: Callable[[random.Random],
       Params], solve: Solver) -> ProblemType:
    words = {k: v for k, v in _W.items() if "{" + k + "}" in template}
    return ProblemType(name, pitfalls, template, draw, solve, words)


TYPES: tuple[ProblemType, ...] = (
    _t("double_discount", ("stacked_percent",), "A {item} costs ${price}. The shop takes "
       "{d1}% off, and at the checkout a further {d2}% is taken off the reduced price. How "
       "many dollars does {name} pay for the {item}?", _d_double, solve_double_discount),
    _t("reverse_discount", ("percent_base",), "After a {d}% discount, a {item} sells for "
       "${sale}. What was its original price in dollars?", _d_reverse, solve_reverse_discount),
    _t("raise_then_cut", ("stacked_percent", "percent_base"), "A shop raised the price of a "
       "{item} by {a}% and later cut the new price by {b}%. The {item} now costs ${final}. "
       "What was its price in dollars before the raise?", _d_raise_cut, solve_raise_then_cut),
    _t("compound_interest", ("stacked_percent",), "{name} deposits ${deposit} in an account "
       "paying {rate}% interest per year, compounded yearly. How many dollars are in the "
       "account after {years} years?", _d_compound, solve_compound),
    _t("profit_percent", ("percent_base",), "{name} buys a {item} for ${cost} and sells it "
       "for ${sell}. What is the profit as a percentage of the cost?", _d_profit, solve_profit),
    _t("round_trip_speed", ("average_rates",), "{name} drives to a town {d} km away at {v1} "
       "km/h and comes back on the same road at {v2} km/h. What is the average speed of the "
       "round trip in km/h?", _d_round_trip, solve_round_trip),
    _t("two_leg_trip", ("average_rates", "unit_mismatch"), "{name} cycles {d1} km at {v1} "
       "km/h and then rides for {mins} minutes at {v2} km/h. What is the average speed over "
       "the whole ride in km/h?", _d_two_leg, solve_two_leg),
    _t("machine_output", ("unit_mismatch",), "A machine makes {k} {goods} per minute. How "
       "many {goods} does it make in {hours} hours?", _d_machine, solve_machine),
    _t("length_sum", ("unit_mismatch",), "{name} has a ribbon {a} m long and another ribbon "
       "{b} cm long. What is their total length in centimetres?", _d_length, solve_length_sum),
    _t("tile_boxes", ("unit_mismatch", "round_up"), "A floor measures {w} m by {l} m. Square "
       "tiles of {s} cm by {s} cm come in boxes of {k}. How many boxes are needed to cover the "
       "floor?", _d_tiles, solve_tiles),
    _t("fence_posts", ("fence_post",), "A straight fence is {length} m long with a post every "
       "{gap} m, including a post at each end. How many posts are there?", _d_fence, solve_fence),
    _t("page_range", ("fence_post",), "{name} reads a book from page {first} to page {last}, "
       "including both of those pages. How many pages does {name} read?", _d_pages, solve_pages),
    _t("bell_rings", ("fence_post", "unit_mismatch"), "A bell rings every {every} minutes "
       "during a {hours}-hour event, with one ring at the very start and one at the very "
       "end. How many times does it ring?", _d_bell, solve_bell),
    _t("buses_needed", ("round_up",), "{n} students are going on a trip and each bus holds "
       "{cap} students. How many buses are needed?", _d_buses, solve_buses),
    _t("ages_sum_future", ("both_age",), "The ages of {name}'s {kids} children add up to "
       "{total} years. What will the sum of their ages be in {years} years?", _d_ages_sum,
       solve_ages_sum),
    _t("ages_ratio_future", ("both_age",), "{name} is {x} years old and {name2} is {y} years "
       "old. In how many years will {name} be exactly twice as old as {name2}?",
       _d_ages_ratio, solve_ages_ratio),
    _t("work_together", ("combine_rates",), "{name} can paint a fence in {a} hours and "
       "{name2} can paint it in {b} hours. Working together, how many hours do they need?",
       _d_work, solve_work),
    _t("two_pumps", ("combine_rates", "unit_mismatch"), "One pump fills {name}'s tank in "
       "{hours} hours and a second pump fills it in {mins} minutes. With both pumps running, "
       "how many minutes does it take to fill the tank?", _d_pumps, solve_pumps),
    _t("fill_and_drain", ("combine_rates",), "An inlet pipe fills a pool in {fill} hours and "
       "a drain empties the full pool in {drain} hours. With both open, how many hours does "
       "it take to fill the empty pool?", _d_pipes, solve_pipes),
    _t("mixture", ("weighted_average",), "{x} litres of a {p}% salt solution are mixed with "
       "{y} litres of a {q}% salt solution. What is the salt concentration of the mixture in "
       "percent?", _d_mixture, solve_mixture),
    _t("class_average", ("weighted_average",), "A class of {n1} students averaged {a1} "
       "points on a test and another class of {n2} students averaged {a2} points. What is the "
       "average score of all the students together?", _d_classes, solve_classes),
    _t("new_average", ("weighted_average",), "{name}'s average over {n} tests is {avg}. "
       "After scoring {score} on the next test, what is {name}'s new average?",
       _d_new_average, solve_new_average),
)
