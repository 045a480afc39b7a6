"""crps-puzzles: the `game24` and `countdown` domains (exact arithmetic) and their formats."""

from __future__ import annotations

from crps_puzzles.arith import Check, ExpressionError, check_expression, parse_answer
from crps_puzzles.domains import CountdownDomain, Game24Domain
from crps_puzzles.extract import extract_expression

__all__ = ["Check", "CountdownDomain", "ExpressionError", "Game24Domain", "check_expression",
           "extract_expression", "parse_answer"]
__version__ = "0.1.0"
