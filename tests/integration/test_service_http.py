"""The memory service over real HTTP on loopback (uvicorn): MemoryClient as a drop-in for
Memory, 8 concurrent clients x 100 outcomes with exact counters, 200 malformed requests,
and `crps-agent serve` as a process with an API key."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from crps_agent.client import MemoryClient
from crps_agent.errors import NotFoundError, StoreError
from crps_agent.integrations.ops import InvalidRequestError
from crps_agent.memory import Memory
from crps_agent.service.load import run_load, seeded_memory, serving
from crps_agent.types import Insight

pytestmark = [pytest.mark.integration, pytest.mark.server]

ROOT = Path(__file__).parents[2]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Memory]]:
    memory = seeded_memory(tmp_path / "store")
    with serving(memory) as url:
        yield url, memory


def test_client_is_a_drop_in_for_memory(service: tuple[str, Memory]) -> None:
    url, memory = service
    remote = MemoryClient(url)

    def use(mem: Any) -> tuple[list[str], list[float]]:
        hits = mem.recall("add quantities with units", namespace="default", k=3)
        return [h.insight.id for h in hits], [round(h.score, 5) for h in hits]

    assert use(remote) == use(memory)  # the same answer, embedded or over HTTP
    hits = remote.recall("add quantities with units", k=2)
    assert isinstance(hits[0].insight, Insight) and hits[0].insight.text
    remote.record([hits[0].insight.id], correct=False)
    assert memory.insights.get(hits[0].insight.id).losses == 1
    out = remote.remember([Insight(text="Name each unknown before writing equations.",
                                   kind="strategy", domain="math")])
    assert out[0].merged is False and remote.get(out[0].insight.id).kind == "strategy"
    assert out[0].insight.id in {i.id for i in remote.list(limit=100)}
    assert remote.stats()["total"] == 7
    with pytest.raises(NotFoundError):
        remote.get("no-such-insight")
    with pytest.raises(InvalidRequestError, match="k"):
        remote.recall("x", k=0)
    remote.delete(out[0].insight.id)
    assert remote.healthy()
    with pytest.raises(StoreError, match="cannot reach"):
        MemoryClient("http://127.0.0.1:9").recall("x")


def test_concurrent_outcomes_are_exact(service: tuple[str, Memory]) -> None:
    url, memory = service
    before = {i.id: (i.uses, i.wins, i.losses) for i in memory.insights.list()}
    report = run_load(url, clients=8, outcomes=100)
    assert report.outcomes == 800 and report.recalls == 800
    after = {i.id: i for i in memory.insights.list()}
    for rid, n in report.credited.items():
        uses, wins, losses = before[rid]
        ins = after[rid]
        assert ins.uses - uses == n  # every credited outcome counted exactly once
        assert (ins.wins - wins) + (ins.losses - losses) == n
    assert sum(report.credited.values()) == sum(i.uses for i in after.values())
    assert sum(i.wins for i in after.values()) > 0 and sum(i.losses for i in after.values()) > 0
    print(json.dumps({"bench": "service_load_test",
                      **{k: v for k, v in report.__dict__.items() if k != "credited"}}))


def _malformed() -> list[tuple[str, str, dict[str, Any]]]:
    """(method, path, httpx kwargs): 200 requests that must all be refused."""
    injections = ["Robert'); DROP TABLE insights;--\x00", "<script>alert(1)</script>\x1b[31m",
                  "{{7*7}} ${jndi:ldap://x}\x07", "\x00" * 10]
    bad_namespaces = ["a//b", "", " ", "a b", "x" * 300, "/lead", "tail/", "ns\n"]
    cases: list[tuple[str, str, dict[str, Any]]] = []
    wrong_types = [{"query": 5}, {"query": ["a"]}, {"query": {"$ne": 1}}, {"query": None},
                   {"query": "x", "k": "5"}, {"query": "x", "k": 2.5}, {"query": "x", "k": -1},
                   {"query": "x", "k": 10_000}, {"query": "x", "k": [1]}, {}]
    cases += [("POST", "/v1/recall", {"json": b}) for b in wrong_types]
    outcome_types = [{"insight_ids": "abc", "success": True},
                     {"insight_ids": [1, 2], "success": True},
                     {"insight_ids": ["a"], "success": "true"},
                     {"insight_ids": ["a"], "success": 1},
                     {"insight_ids": ["a"], "success": None}, {"insight_ids": ["a"]},
                     {"success": True}, {"insight_ids": [], "success": False},
                     {"insight_ids": ["x"] * 1000, "success": True},
                     {"insight_ids": ["a"], "success": True, "admin": True}]
    cases += [("POST", "/v1/outcomes", {"json": b}) for b in outcome_types]
    insight_types = [{"text": 5}, {"text": ["a"]}, {"text": None}, {},
                     {"text": "ok words", "kind": 3}, {"text": "ok words", "tags": "t"},
                     {"text": "ok words", "tags": [1]}, {"text": "ok words", "domain": 5},
                     {"text": "ok words", "status": "active"}, {"text": "ok words", "uses": 99}]
    cases += [("POST", "/v1/insights", {"json": b}) for b in insight_types]
    for ns in bad_namespaces:
        cases += [("POST", "/v1/recall", {"json": {"query": "units", "namespace": ns}}),
                  ("POST", "/v1/insights", {"json": {"text": "Useful advice.",
                                                     "namespace": ns}}),
                  ("GET", "/v1/insights", {"params": {"namespace": ns}}),
                  ("GET", "/v1/stats", {"params": {"namespace": ns}})]
    for text in injections:
        cases += [("POST", "/v1/insights", {"json": {"text": text}}),
                  ("POST", "/v1/insights", {"json": {"text": "word " * 50 + text}}),
                  ("GET", f"/v1/insights/{quote(text[:20], safe='')}", {}),
                  ("PATCH", "/v1/insights/x", {"json": {"text": text}})]
    huge = "a" * 300_000
    cases += [("POST", "/v1/insights", {"json": {"text": huge}}),
              ("POST", "/v1/recall", {"json": {"query": huge}}),
              ("POST", "/v1/recall", {"content": b"[" * 200_000,
                                      "headers": {"content-type": "application/json"}}),
              ("POST", "/v1/outcomes", {"content": b'{"insight_ids": ["' + b"a" * 300_000
                                        + b'"], "success": true}',
                                        "headers": {"content-type": "application/json"}})]
    cases += [("POST", "/v1/recall", {"content": b"{not json",
                                      "headers": {"content-type": "application/json"}}),
              ("POST", "/v1/recall", {"content": b"query=units",
                                      "headers": {"content-type": "text/plain"}}),
              ("GET", "/v1/insights", {"params": {"limit": "-1"}}),
              ("GET", "/v1/insights", {"params": {"limit": "abc"}}),
              ("GET", "/v1/insights", {"params": {"offset": "-5"}}),
              ("GET", "/v1/insights", {"params": {"status": "sleeping"}}),
              ("DELETE", "/v1/insights/no-such-id", {}),
              ("PATCH", "/v1/insights/no-such-id", {"json": {"kind": "check"}})]
    fill = itertools.cycle(cases)
    while len(cases) < 200:
        cases.append(next(fill))
    return cases[:200]


def test_malformed_requests_are_refused_and_change_nothing(
        service: tuple[str, Memory]) -> None:
    url, memory = service
    cases = _malformed()
    assert len(cases) == 200
    before = [(i.id, i.text, i.uses, i.status) for i in memory.insights.list()]
    with httpx.Client(base_url=url, timeout=30) as http:
        for method, path, kwargs in cases:
            r = http.request(method, path, **kwargs)
            assert 400 <= r.status_code < 500, (method, path, str(kwargs)[:200], r.text[:300])
            assert r.json()["detail"]
        assert http.get("/healthz").json() == {"status": "ok"}  # still up
    assert [(i.id, i.text, i.uses, i.status) for i in memory.insights.list()] == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_with_api_key(tmp_path: Path) -> None:
    paths = [str(ROOT), *(str(p) for p in sorted((ROOT / "plugins").glob("*")))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "HF_HUB_OFFLINE": "1",
           "CRPS_MEMORY__ADMISSION": "false", "MY_KEY": "k3y"}
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "crps_agent", "serve", "--store",
                             str(tmp_path / "store"), "--embedder", "hash", "--port", str(port),
                             "--api-key-env", "MY_KEY"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert httpx.get(f"{url}/v1/stats").status_code == 401
        with pytest.raises(StoreError, match="API key"):
            MemoryClient(url, api_key="wrong").stats()
        client = MemoryClient(url, api_key="k3y")
        added = client.add("Write the rate equation with units before solving for time.",
                           domain="math")
        assert added.insight.status == "active"
        hits = client.recall("write the equation", domain="math")
        assert [h.insight.id for h in hits] == [added.insight.id]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    # without the variable set, the command refuses to start, in one line
    bad = subprocess.run([sys.executable, "-m", "crps_agent", "serve", "--store",
                          str(tmp_path / "store"), "--api-key-env", "UNSET_VAR_X"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "UNSET_VAR_X" in bad.stderr
    assert "Traceback" not in bad.stderr
