"""The one retry policy of the HTTP backends (tenacity): what is transient, how long to
wait, and what a waiting run says.

Transient: connection errors and timeouts, 429 and 5xx, and a 200 whose body is not a
usable answer (truncated or non-JSON, an HTML error page, `choices` empty, null or holding
null) — a proxy or an overloaded server produces all of these and the same request usually
succeeds a moment later. Anything else (a 4xx naming the request) fails at once. Waits grow
exponentially with jitter, at least a server's `Retry-After`, at most `max_backoff`; each
wait is logged ("waiting for the backend: attempt 2/5 ...") so a slow server is visible
with `--verbose` instead of silent.
"""

from __future__ import annotations

import logging
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from crps_agent.errors import BackendError

log = logging.getLogger("crps_agent.backends")


class TransientError(BackendError):
    """A failure the same request may not meet again: retried, then reported."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Wait:
    """Exponential backoff with jitter, raised to the server's Retry-After (capped)."""

    def __init__(self, backoff: float, max_backoff: float) -> None:
        self.max_backoff = max_backoff
        self.exp = wait_exponential_jitter(initial=backoff, max=max_backoff, jitter=backoff)

    def __call__(self, state: RetryCallState) -> float:
        wait = min(self.max_backoff, float(self.exp(state)))
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None:
            wait = max(wait, min(float(after), self.max_backoff))
        return wait


def _policy(what: str, max_retries: int, backoff: float, max_backoff: float,
            on_retry: Any) -> dict[str, Any]:
    attempts = max_retries + 1

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning("waiting for the backend: attempt %d/%d of %s failed (%s); next in "
                    "%.1f s", state.attempt_number, attempts, what, exc, wait)
        if on_retry is not None:
            on_retry()

    return {"stop": stop_after_attempt(attempts), "wait": _Wait(backoff, max_backoff),
            "retry": retry_if_exception_type(TransientError), "before_sleep": before_sleep,
            "reraise": True}


def async_retrying(what: str, *, max_retries: int, backoff: float, max_backoff: float,
                   on_retry: Any = None) -> AsyncRetrying:
    """`async for attempt in async_retrying(...): with attempt: ...` retries TransientError."""
    return AsyncRetrying(**_policy(what, max_retries, backoff, max_backoff, on_retry))


def retrying(what: str, *, max_retries: int, backoff: float, max_backoff: float,
             on_retry: Any = None) -> Retrying:
    """The synchronous form of `async_retrying`."""
    return Retrying(**_policy(what, max_retries, backoff, max_backoff, on_retry))


def gave_up(url: str, attempts: int, exc: TransientError) -> BackendError:
    """The error a caller raises once the retries are spent."""
    return BackendError(f"{url} failed after {attempts} attempts ({exc}); is the server up "
                        "and the --base-url right?")
