"""Exact checking of arithmetic-puzzle answers (Game of 24, Countdown).

An answer is an expression over the puzzle's numbers with `+ - * /` and brackets. It is
normalised (`×`, `·`, `\\times`, `\\cdot` → `*`; `÷`, `\\div` → `/`; `−`, `–` → `-`; `[ ]`
and `{ }` → `( )`; `\\frac{a}{b}` → `(a)/(b)`; `x` between operands → `*`; `$`, `\\left`,
`\\right` dropped), parsed with `ast.parse(mode="eval")` and evaluated by walking the tree
with `fractions.Fraction` — nothing is ever `eval`-ed, and only integer literals and the
four binary operations are accepted. A trailing `= 24` (or any chain `... = 6 * 4 = 24`) is
allowed; the last member must then be the target. Rejected, each with a reason: powers
(`**`, `^`), unary signs, decimals, calls, names and any other non-arithmetic text, numbers
not in the puzzle (concatenated digits included), a number used more often than given or
(when all must be used) not at all, division by zero, and a wrong value.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 400  # longer "expressions" are not puzzle answers (and bound the parser's work)

_Repl = str | Callable[[re.Match[str]], str]
_LATEX: list[tuple[re.Pattern[str], _Repl]] = [
    (re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])"), ""),
    (re.compile(r"\\(?:times|cdot|ast)(?![a-zA-Z])"), "*"),
    (re.compile(r"\\div(?![a-zA-Z])"), "/"),
    (re.compile(r"\\[,;:! ]"), " "),
    (re.compile(r"\\(?:\(|\)|\[|\])"), " "),  # math delimiters \( \) \[ \]
    (re.compile(r"\\[{}]"), lambda m: "(" if m.group(0) == "\\{" else ")"),
]
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_GLYPHS = str.maketrans({"×": "*", "✕": "*", "⨯": "*", "·": "*", "⋅": "*", "∗": "*",
                         "÷": "/", "∕": "/", "−": "-", "–": "-", "—": "-", "＋": "+",
                         "[": "(", "]": ")", "{": "(", "}": ")", "$": " ", "`": " ",
                         "\u00a0": " "})
_TIMES_X = re.compile(r"(?<=[\d)\s])[xX](?=\s*[\d(])")
_ALLOWED = re.compile(r"[0-9+\-*/().=\s]*")


class ExpressionError(ValueError):
    """The text is not an acceptable puzzle expression (the message says why)."""


@dataclass(frozen=True)
class Check:
    ok: bool
    reason: str
    value: Fraction | None = None
    expression: str | None = None


def normalise(text: str) -> str:
    """The expression in plain ASCII arithmetic (see the module doc)."""
    s = text.strip()
    for _ in range(8):  # nested fractions
        new = _FRAC.sub(r"((\1)/(\2))", s)
        if new == s:
            break
        s = new
    for pattern, repl in _LATEX:
        s = pattern.sub(repl, s)
    s = s.translate(_GLYPHS)
    s = _TIMES_X.sub("*", s)
    s = re.sub(r"\s+", " ", s).strip()
    return s.rstrip(".").strip()


def _number(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Constant) and isinstance(node.value, float):
        raise ExpressionError("decimal numbers are not allowed")
    raise ExpressionError("not an arithmetic expression")


_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _walk(node: ast.AST, numbers: list[int]) -> None:
    """Check the tree's shape and collect its integer literals (in order)."""
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.Pow):
            raise ExpressionError("powers are not allowed")
        if type(node.op) not in _OPS:
            raise ExpressionError(f"operator {type(node.op).__name__} is not allowed "
                                  "(only + - × ÷)")
        _walk(node.left, numbers)
        _walk(node.right, numbers)
    elif isinstance(node, ast.UnaryOp):
        raise ExpressionError("signs (unary + or -) are not allowed: only the four "
                              "operations between numbers")
    elif isinstance(node, ast.Call):
        raise ExpressionError("an operator is missing between brackets (write × explicitly)")
    else:
        numbers.append(_number(node))


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.BinOp):
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ExpressionError("division by zero")
        return left / right
    return Fraction(_number(node))


def _parse(expr: str) -> ast.AST:
    if not expr:
        raise ExpressionError("empty expression")
    if "**" in expr or "^" in expr:
        raise ExpressionError("powers are not allowed")
    if not _ALLOWED.fullmatch(expr):
        bad = sorted({c for c in expr if not _ALLOWED.fullmatch(c)})
        raise ExpressionError(f"not an arithmetic expression (unexpected {''.join(bad)[:10]!r})")
    if re.search(r"\d\s+\d", expr):
        raise ExpressionError("numbers side by side without an operator (digits cannot be "
                              "joined)")
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ExpressionError("not a well-formed arithmetic expression") from None
    return tree.body


@dataclass(frozen=True)
class Parsed:
    expression: str  # normalised, without the "= ..." members
    numbers: list[int]  # the integer literals, in order
    value: Fraction
    claimed: Fraction | None  # the last "= N" member, if any


def parse_answer(text: str) -> Parsed:
    """Parse an answer such as `(10 - 4) × (13 - 9) = 24`; raises ExpressionError."""
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"longer than {MAX_CHARS} characters: not a puzzle answer")
    s = normalise(text)
    if not s:
        raise ExpressionError("empty expression")
    members = [m.strip() for m in s.split("=")]
    if any(not m for m in members):
        raise ExpressionError("an '=' without an expression on one side")
    # "24 = (10 - 4) * (13 - 9)": the target first.
    if len(members) == 2 and re.fullmatch(r"\d+", members[0]) \
            and not re.fullmatch(r"\d+", members[1]):
        members = [members[1], members[0]]
    expr = members[0]
    node = _parse(expr)
    numbers: list[int] = []
    _walk(node, numbers)
    value = _value(node)
    claimed: Fraction | None = None
    if len(members) > 1:
        last = _parse(members[-1])
        last_numbers: list[int] = []
        _walk(last, last_numbers)
        claimed = _value(last)
        for middle in members[1:-1]:  # "a = b = c": every member must agree
            mid = _parse(middle)
            _walk(mid, [])
            if _value(mid) != value:
                raise ExpressionError(f"the chain of '=' is inconsistent at {middle!r}")
    return Parsed(expression=expr, numbers=numbers, value=value, claimed=claimed)


def _fmt(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


def check_expression(text: str, numbers: Iterable[int], target: int | Fraction, *,
                     use_all: bool = True) -> Check:
    """Whether `text` makes `target` from `numbers` (each at most once; exactly once when
    `use_all`). Never raises on bad text: returns `Check(ok=False, reason=...)`."""
    target = Fraction(target)
    pool = Counter(int(n) for n in numbers)
    try:
        parsed = parse_answer(text)
    except ExpressionError as exc:
        return Check(False, str(exc))
    except Exception as exc:  # a verifier never crashes on model output
        return Check(False, f"cannot read the expression ({type(exc).__name__})")
    used = Counter(parsed.numbers)
    for n in dict.fromkeys(parsed.numbers):  # in order of appearance
        if n not in pool:
            hint = " (digits cannot be joined)" if len(str(n)) > 1 and all(
                int(d) in pool for d in str(n)) else ""
            return Check(False, f"uses {n}, which is not one of the numbers{hint}",
                         expression=parsed.expression)
        if used[n] > pool[n]:
            times = "once" if pool[n] == 1 else f"{pool[n]} times"
            return Check(False, f"uses {n} {used[n]} times, but it is given {times}",
                         expression=parsed.expression)
    if use_all:
        missing = sorted((pool - used).elements())
        if missing:
            return Check(False, f"does not use {', '.join(map(str, missing))}",
                         expression=parsed.expression)
    if parsed.claimed is not None and parsed.claimed != target:
        return Check(False, f"claims {_fmt(parsed.claimed)}, not {_fmt(target)}",
                     parsed.value, parsed.expression)
    if parsed.value != target:
        return Check(False, f"evaluates to {_fmt(parsed.value)}, not {_fmt(target)}",
                     parsed.value, parsed.expression)
    return Check(True, f"makes {_fmt(target)}", parsed.value, parsed.expression)
