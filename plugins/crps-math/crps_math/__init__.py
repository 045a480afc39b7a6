"""crps-math: the `math` domain (Math-Verify equivalence) and the gsm8k/math500 formats."""

from __future__ import annotations

from crps_math.domain import MathDomain
from crps_math.equivalence import math_equivalent
from crps_math.extract import extract_math_answer

__all__ = ["MathDomain", "extract_math_answer", "math_equivalent"]
__version__ = "0.1.0"
