"""The one token limit of an attempt at a task.

Search (best-of-n samples, MCTS rollouts), admission checks, the adoption gate and `eval`
all sample solutions of the same task; if they used different limits, an attempt that fits
in one would be cut in another, and a "failure" would only mean "too long for this phase".
They all take the limit from `token_budget`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crps_agent.config import SearchSettings
    from crps_agent.domains import Domain


def token_budget(settings: SearchSettings, domain: Domain | str | None = None) -> int:
    """Completion tokens one attempt at a task of `domain` may use (for MCTS: the whole
    rollout, prefix included).

    Precedence: `search.domain_max_tokens[domain]` (config), then the domain's own
    `max_tokens` (a plugin's default), then the search method's limit
    (`search.max_tokens` for best-of-n, `search.mcts.rollout_tokens` for MCTS).
    """
    name = domain if isinstance(domain, str) else getattr(domain, "name", None)
    if name and name in settings.domain_max_tokens:
        return int(settings.domain_max_tokens[name])
    own = None if isinstance(domain, str) else getattr(domain, "max_tokens", None)
    if isinstance(own, int) and own > 0:
        return own
    return settings.mcts.rollout_tokens if settings.method == "mcts" else settings.max_tokens
