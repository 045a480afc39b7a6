"""The retry policy of the HTTP backends (backends/retry.py) and what counts as a usable
200 (backends/openai.py `_answer`); the loopback fault matrix is
tests/integration/test_backend_faults.py."""

from __future__ import annotations

import logging

import httpx
import pytest

from crps_agent.backends.openai import _answer
from crps_agent.backends.retry import TransientError, _Wait, retrying
from crps_agent.errors import BackendError


@pytest.mark.parametrize("body", [b"<html><body>502 Bad Gateway</body></html>",
                                  b'{"id": "x", "choices": [{"ind', b"[]", b'{"choices": []}',
                                  b'{"choices": null}', b'{"choices": [null]}', b"{}"])
def test_a_200_without_usable_choices_is_transient(body: bytes) -> None:
    with pytest.raises(TransientError):
        _answer(httpx.Response(200, content=body))


def test_a_usable_200_is_its_json() -> None:
    data = _answer(httpx.Response(200, json={"choices": [{"message": {"content": None}}]}))
    assert data["choices"][0]["message"]["content"] is None  # empty, but an answer


def test_transient_errors_are_retried_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("HTTP 503: busy")
        return "ok"

    with caplog.at_level(logging.WARNING, logger="crps_agent.backends"):
        for attempt in retrying("http://x/v1", max_retries=4, backoff=0.001, max_backoff=0.01):
            with attempt:
                result = flaky()
    assert result == "ok" and len(calls) == 3
    waits = [r.getMessage() for r in caplog.records]
    assert len(waits) == 2 and "attempt 1/5" in waits[0] and "attempt 2/5" in waits[1]


def test_retries_end_and_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise TransientError("ConnectError")

    with pytest.raises(TransientError):
        for attempt in retrying("u", max_retries=2, backoff=0.001, max_backoff=0.01):
            with attempt:
                down()
    assert len(calls) == 3
    calls.clear()

    def rejected() -> None:
        calls.append(1)
        raise BackendError("HTTP 401")

    with pytest.raises(BackendError, match="401"):
        for attempt in retrying("u", max_retries=2, backoff=0.001, max_backoff=0.01):
            with attempt:
                rejected()
    assert len(calls) == 1


def test_the_wait_honours_retry_after_up_to_the_cap() -> None:
    class State:
        attempt_number = 1

        class outcome:  # the attribute tenacity reads
            @staticmethod
            def exception() -> BaseException:
                return TransientError("HTTP 429", retry_after=3.0)

    assert _Wait(0.01, 10.0)(State()) == pytest.approx(3.0)  # type: ignore[arg-type]
    assert _Wait(0.01, 2.0)(State()) == pytest.approx(2.0)  # type: ignore[arg-type]
