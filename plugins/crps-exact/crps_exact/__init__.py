"""crps-exact: domains `exact`, `mc` and `bbh`, and the `bbh` task format."""

from __future__ import annotations

from crps_exact.domains import BBHDomain, ExactDomain, MCDomain, choice_letter
from crps_exact.extract import extract_final, normalise

__all__ = ["BBHDomain", "ExactDomain", "MCDomain", "choice_letter", "extract_final",
           "normalise"]
__version__ = "0.1.0"
