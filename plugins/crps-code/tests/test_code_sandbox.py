"""The hostile-code suite: each attack ends as a failed verdict with its reason, the host
unharmed. Every attack runs twice where the host allows it: with the in-interpreter audit
hook (the normal setup) and without it, against the OS walls alone (namespaces, own uid,
rlimits)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from crps_agent.types import Task
from crps_code.domain import CodeDomain, build_program, plan_of
from crps_code.sandbox import Limits, RunResult, isolation, run_tests

PLUGIN_DIR = Path(__file__).resolve().parents[1]
OS_WALLS = isolation().namespaces
GUARDS = [True, pytest.param(False, marks=pytest.mark.skipif(
    not OS_WALLS, reason="no namespaces here: the audit hook is the only wall"))]


def _task(tests: list[str], entry: str = "f") -> Task:
    return Task(prompt="Write f.", domain="code", id="t", meta={"entry_point": entry,
                                                                "tests": tests})


def _run(code: str, tests: list[str] | None = None, guard: bool = True,
         limits: Limits | None = None) -> RunResult:
    task = _task(tests or ["assert candidate() == 1"])
    return run_tests(build_program(task, code), "f", plan_of(task), limits or Limits(),
                     guard=guard)


def _sandbox_processes() -> list[str]:
    """Command lines of sandbox processes still alive on the host."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "crps-code-" in cmd and "runner.py" in cmd:
            found.append(cmd)
    return found


def test_honest_code_gets_the_share_of_tests_passed() -> None:
    res = _run("def f(x):\n    return x * 2 if x < 3 else 0\n",
               ["assert f(1) == 2", "assert candidate(2) == 4", "assert f(3) == 6"])
    assert (res.total, res.passed) == (3, 2)
    assert res.reward == pytest.approx(2 / 3) and not res.correct
    assert "2/3 tests passed" in res.detail() and "test 2: AssertionError" in res.detail()


@pytest.mark.parametrize("guard", GUARDS)
def test_fork_bomb(guard: bool) -> None:
    res = _run("import os\ndef f():\n    while True:\n        os.fork()\n", guard=guard,
               limits=Limits(wall_s=10))
    assert not res.correct and res.reward == 0.0
    if guard:
        assert "process creation blocked" in res.detail()
    else:  # RLIMIT_NPROC under the sandbox's own uid / user namespace
        assert "Resource temporarily unavailable" in res.detail() or res.reason
    assert _sandbox_processes() == []


@pytest.mark.parametrize("guard", GUARDS)
def test_memory_hog(guard: bool) -> None:
    res = _run("def f():\n    blocks = []\n    while True:\n"
               "        blocks.append(bytearray(100 * 1024 * 1024))\n",
               guard=guard, limits=Limits(memory_mb=512))
    assert not res.correct and res.reward == 0.0
    assert "MemoryError" in res.detail() or "memory" in res.detail()


@pytest.mark.parametrize("guard", GUARDS)
def test_infinite_loop_hits_the_cpu_limit(guard: bool) -> None:
    res = _run("def f():\n    while True:\n        pass\n", guard=guard,
               limits=Limits(cpu_s=1, wall_s=15))
    assert not res.correct and "CPU time limit" in res.detail()
    assert res.seconds < 15


def test_sleeping_loop_hits_the_wall_limit() -> None:
    res = _run("import time\ndef f():\n    while True:\n        time.sleep(1)\n",
               limits=Limits(wall_s=2))
    assert not res.correct and "wall time limit exceeded (2 s)" in res.detail()
    assert res.seconds < 6 and _sandbox_processes() == []


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A real TCP server on loopback that records every connection it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except OSError:
                continue
            accepted.append(addr)
            conn.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    th.join()
    srv.close()


@pytest.mark.parametrize("guard", GUARDS)
def test_socket_connect(guard: bool, listener: tuple[int, list[object]]) -> None:
    port, accepted = listener
    res = _run(f"import socket\ndef f():\n"
               f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
               f"    return 1\n", guard=guard)
    assert not res.correct and res.reward == 0.0
    assert ("network blocked" in res.detail()) if guard else ("Error" in res.detail())
    assert accepted == []


@pytest.mark.parametrize("guard", GUARDS)
def test_writing_into_the_project_directory(guard: bool) -> None:
    target = PLUGIN_DIR / f"PWNED-{uuid.uuid4().hex}"
    res = _run(f"def f():\n    open({str(target)!r}, 'w').write('x')\n    return 1\n",
               guard=guard)
    assert not target.exists()
    assert not res.correct
    assert ("write outside the sandbox directory" in res.detail()) if guard \
        else ("PermissionError" in res.detail())


def test_writing_inside_its_own_directory_is_allowed() -> None:
    res = _run("import os, tempfile\ndef f():\n"
               "    p = os.path.join(tempfile.gettempdir(), 'x.txt')\n"
               "    open(p, 'w').write('1')\n    return int(open(p).read())\n")
    assert res.correct, res.detail()


@pytest.mark.parametrize("guard", GUARDS)
def test_parent_secrets_are_not_visible(guard: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRPS_TEST_SECRET", "hunter2")
    parent = os.getpid()
    res = _run("import os\ndef f():\n    return os.environ.get('CRPS_TEST_SECRET')\n",
               ["assert candidate() == 'hunter2'"], guard=guard)
    assert not res.correct and "AssertionError" in res.detail()
    # Nor through the parent's /proc entry.
    res = _run(f"def f():\n    return open('/proc/{parent}/environ', 'rb').read()\n",
               ["assert b'hunter2' in candidate()"], guard=guard)
    assert not res.correct and "hunter2" not in res.detail()


@pytest.mark.parametrize("guard", GUARDS)
def test_killing_the_parent(guard: bool) -> None:
    received: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: received.append(s))
    try:
        res = _run(f"import os, signal\ndef f():\n"
                   f"    os.kill({os.getpid()}, signal.SIGUSR1)\n"
                   f"    os.kill(os.getppid(), signal.SIGUSR1)\n    return 1\n", guard=guard)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert received == [] and not res.correct
    if guard:
        assert "signal to another process blocked" in res.detail()


@pytest.mark.parametrize("guard", GUARDS)
def test_huge_output(guard: bool) -> None:
    res = _run("def f():\n    while True:\n        print('x' * 10000)\n", guard=guard,
               limits=Limits(max_output=50_000))
    assert not res.correct and "output limit exceeded" in res.detail()
    assert len(res.output) <= 50_000


def test_exit_before_reporting_fails() -> None:
    res = _run("import os\nos._exit(0)\ndef f():\n    return 1\n")
    assert not res.correct and res.passed == 0
    assert "ended without finishing the tests (exit code 0)" in res.detail()


def test_domain_verdict_carries_the_reason() -> None:
    task = _task(["assert candidate() == 1"])
    v = CodeDomain().verify(task, "```python\nimport os\ndef f():\n    os.fork()\n```")
    assert (v.reward, v.correct) == (0.0, False)
    assert v.detail.startswith("sandbox violation: process creation blocked")


@pytest.mark.parametrize("guard", GUARDS)
def test_limits_cannot_be_raised(guard: bool) -> None:
    res = _run("import resource\ndef f():\n"
               "    inf = resource.RLIM_INFINITY\n"
               "    resource.setrlimit(resource.RLIMIT_AS, (inf, inf))\n    return 1\n",
               guard=guard)
    assert not res.correct
    assert ("changing limits blocked" in res.detail()) if guard \
        else ("Error" in res.detail())
