"""Running untrusted Python in a sandboxed subprocess and counting the tests it passes.

Walls, from the outside in (each says where it comes from; `isolation()` reports which are
active on this host):

- **Namespaces** (`unshare`, when the host allows it): a new network namespace (no
  interface but a down loopback: no network at all), a PID namespace with its own /proc
  (the host's processes, their environments and the parent are invisible, and killing the
  namespace's first process kills every process the candidate started) and a mount
  namespace for that /proc.
- **Unprivileged user**: when the host runs as root the candidate runs under its own unused
  uid, so the file system's permissions forbid writes outside its directory and signals to
  host processes, and RLIMIT_NPROC is enforced (the kernel does not apply it to root).
- **rlimits**: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), processes
  (RLIMIT_NPROC), file size (RLIMIT_FSIZE), open files, no core dumps; the runner sets them
  on itself (soft = hard) before it reads the candidate's code.
- **Wall clock**: the parent kills the whole process group at the deadline.
- **Minimal environment**: only PATH, LANG, HOME and TMPDIR (both the job's directory);
  `python -I` ignores PYTHON* variables and the user's site directory; cwd is the job's dir.
- **Output cap**: stdout and stderr are read up to `max_output` bytes; more kills the run.
- **Audit hook** inside the interpreter (see `runner.py`): names violations and blocks
  process creation, signals, sockets, ctypes and writes outside the directory even where
  the OS walls are missing.
"""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("runner.py")
# Each run gets its own unused uid (when root): RLIMIT_NPROC counts per uid, so one
# candidate's fork bomb cannot starve another's, and they cannot signal each other.
UID_BASE, UID_SPAN = 2_000_000, 1_000_000
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Limits:
    cpu_s: int = 10
    wall_s: float = 20.0
    memory_mb: int = 1024
    nproc: int = 16
    max_output: int = 64_000
    file_mb: int = 8
    open_files: int = 64


@dataclass
class RunResult:
    """What a sandboxed run did: per-test outcomes and, when it ended early, why."""

    total: int
    passed: int = 0
    failures: list[str] = field(default_factory=list)
    reason: str = ""  # why the run failed as a whole ("" when it ran to the end)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    output: str = ""

    @property
    def reward(self) -> float:
        if self.violations or self.total == 0:
            return 0.0
        return self.passed / self.total

    @property
    def correct(self) -> bool:
        return not self.violations and not self.reason and self.total > 0 \
            and self.passed == self.total

    def detail(self) -> str:
        if self.violations:
            return f"sandbox violation: {self.violations[0]}"
        head = f"{self.passed}/{self.total} tests passed"
        if self.reason:
            return f"{head}; {self.reason}"
        if self.failures:
            return f"{head}; first failure: {self.failures[0]}"
        return head


@dataclass(frozen=True)
class CheckPlan:
    """Code run before the tests (`setup`) and the ordered test/setup statements."""

    setup: str
    items: tuple[tuple[str, bool], ...]  # (code, is_test)

    @property
    def total(self) -> int:
        return sum(1 for _, is_test in self.items if is_test)


def _has_assert(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def plan_from_check(test_code: str) -> CheckPlan:
    """HumanEval's `test`: module code plus `def check(candidate)`; each statement of
    `check` that asserts is one test, the others are setup run in order."""
    tree = ast.parse(test_code)
    check = next((n for n in tree.body
                  if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("the test code defines no check(candidate)")
    module = [n for n in tree.body if n is not check]
    items = tuple((ast.unparse(s), _has_assert(s)) for s in check.body)
    return CheckPlan(setup=ast.unparse(ast.Module(body=module, type_ignores=[])), items=items)


def plan_from_list(tests: list[str]) -> CheckPlan:
    """Plain tests: each string is one test (statements that raise on failure)."""
    for t in tests:
        ast.parse(t)
    return CheckPlan(setup="", items=tuple((t, True) for t in tests))


@dataclass(frozen=True)
class Isolation:
    """The OS walls available on this host (probed once by `isolation()`)."""

    namespaces: bool  # network + PID + mount namespaces through `unshare`
    own_uid: bool  # the candidate runs under an unused uid (host runs as root)
    python: str  # the interpreter the sandbox runs (one its uid may execute)
    mode: str  # what the walls are, in words (for logs and reports)


def _probe(cmd: list[str]) -> bool:
    try:
        return subprocess.run([*cmd, "-I", "-c", "pass"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@cache
def isolation() -> Isolation:
    """Probe the walls once: namespaces with an own uid when root (and an interpreter that
    uid may run: this one, else the system's python3), namespaces in a user namespace
    otherwise, and rlimits plus the audit hook alone where `unshare` is refused."""
    pythons = [sys.executable]
    system = shutil.which("python3", path=SAFE_PATH)
    if system and os.path.realpath(system) != os.path.realpath(sys.executable):
        pythons.append(system)
    root = os.geteuid() == 0
    if shutil.which("unshare"):
        if root:
            for py in pythons:
                if _probe([*_unshare_prefix(True, UID_BASE), py]):
                    return Isolation(True, True, py, "namespaces (net, pid, mount) + own uid")
        if _probe([*_unshare_prefix(False), sys.executable]):
            return Isolation(True, False, sys.executable,
                             "namespaces (user, net, pid, mount), same uid")
    log.warning("unshare is not usable here: the code sandbox has rlimits and the audit "
                "hook but no network or PID namespace")
    return Isolation(False, False, sys.executable, "rlimits + audit hook only")


def _unshare_prefix(root: bool, uid: int = UID_BASE) -> list[str]:
    exe = shutil.which("unshare") or "unshare"
    base = [exe, "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    if root:
        return [*base, "--setuid", str(uid), "--setgid", str(uid)]
    # Not root, or root whose interpreter an unused uid cannot run: a user namespace.
    return [*base, "--map-root-user"]


def _rlimits(limits: Limits) -> dict[str, int]:
    """The rlimits the runner applies to itself before it reads the candidate's code."""
    mb = 1024 * 1024
    return {"RLIMIT_CPU": limits.cpu_s, "RLIMIT_AS": limits.memory_mb * mb,
            "RLIMIT_FSIZE": limits.file_mb * mb, "RLIMIT_NOFILE": limits.open_files,
            "RLIMIT_CORE": 0, "RLIMIT_NPROC": limits.nproc}


def _command(job_dir: Path, fd: int, uid: int) -> list[str]:
    iso = isolation()
    prefix = _unshare_prefix(iso.own_uid, uid) if iso.namespaces else []
    argv = [iso.python, "-I", "-B", str(job_dir / "runner.py"), str(job_dir / "job.json"),
            str(fd)]
    return [*prefix, *argv]


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _ended_because(rc: int | None, limits: Limits, timed_out: bool, overflow: bool,
                   output: str) -> str:
    if overflow:
        return f"output limit exceeded (more than {limits.max_output} bytes)"
    if timed_out:
        return f"wall time limit exceeded ({limits.wall_s:g} s)"
    if rc is None:
        return "no result"
    if rc < 0 or rc > 128:
        sig = _signal_name(-rc if rc < 0 else rc - 128)
        if sig in ("SIGXCPU", "SIGKILL") and "MemoryError" not in output:
            return f"killed by {sig} (CPU time limit {limits.cpu_s} s or killed)"
        if sig == "SIGXFSZ":
            return "file size limit exceeded"
        return f"killed by {sig}"
    if "MemoryError" in output:
        return f"memory limit exceeded ({limits.memory_mb} MB)"
    return f"the process ended without finishing the tests (exit code {rc})"


def run_tests(program: str, entry_point: str, plan: CheckPlan,
              limits: Limits | None = None, *, guard: bool = True) -> RunResult:
    """Run `program` and then `plan` in a fresh sandbox; never raises on candidate behaviour.

    `guard=False` leaves out the audit hook (to test the OS walls on their own).
    """
    limits = limits or Limits()
    res = RunResult(total=plan.total)
    start = time.monotonic()
    job_dir = Path(tempfile.mkdtemp(prefix="crps-code-"))
    try:
        shutil.copyfile(RUNNER, job_dir / "runner.py")
        job = {"program": program, "entry_point": entry_point, "setup": plan.setup,
               "items": [{"code": c, "test": t} for c, t in plan.items],
               "root": str(job_dir), "guard": guard, "limits": _rlimits(limits)}
        (job_dir / "job.json").write_text(json.dumps(job), encoding="utf-8")
        uid = UID_BASE + secrets.randbelow(UID_SPAN)
        if isolation().own_uid:
            os.chown(job_dir, uid, uid)
            for p in job_dir.iterdir():
                os.chown(p, uid, uid)
        _execute(job_dir, limits, res, uid)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)
        res.seconds = round(time.monotonic() - start, 3)
    return res


def _execute(job_dir: Path, limits: Limits, res: RunResult, uid: int) -> None:
    r_fd, w_fd = os.pipe()
    cmd = _command(job_dir, w_fd, uid)
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": str(job_dir), "TMPDIR": str(job_dir),
           "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.Popen(cmd, cwd=job_dir, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                pass_fds=(w_fd,), start_new_session=True)
    except OSError as exc:
        os.close(r_fd)
        os.close(w_fd)
        res.reason = f"could not start the sandbox: {exc}"
        return
    os.close(w_fd)
    assert proc.stdout is not None
    results = os.fdopen(r_fd, "rb")
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(results, selectors.EVENT_READ, "res")
    deadline = time.monotonic() + limits.wall_s
    out = bytearray()
    lines = bytearray()
    timed_out = overflow = False
    open_streams = 2
    try:
        while open_streams:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(timeout=min(left, 0.5)):
                chunk = os.read(key.fileobj.fileno(), 65536)  # type: ignore[union-attr]
                if not chunk:
                    sel.unregister(key.fileobj)
                    open_streams -= 1
                elif key.data == "out":
                    out += chunk
                    if len(out) > limits.max_output:
                        overflow = True
                else:
                    lines += chunk
                    if len(lines) > 4 * 1024 * 1024:
                        overflow = True
            if overflow:
                break
    finally:
        _kill_group(proc)
        sel.close()
        results.close()
        proc.stdout.close()
    res.output = out[: limits.max_output].decode("utf-8", "replace")
    done = _read_results(bytes(lines), res)
    if not done or timed_out or overflow:
        res.reason = _ended_because(proc.returncode, limits, timed_out, overflow, res.output)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        log.warning("sandbox process %d did not exit after SIGKILL", proc.pid)


def _read_results(data: bytes, res: RunResult) -> bool:
    """Fold the runner's JSON lines into `res`; True when it reported the end."""
    done = False
    seen: set[int] = set()
    for raw in data.splitlines():
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        if "violation" in obj:
            res.violations.append(str(obj["violation"]))
        elif "fatal" in obj:
            res.reason = str(obj["fatal"])
            done = True
        elif "test" in obj and isinstance(obj["test"], int) and obj["test"] not in seen:
            seen.add(obj["test"])
            if obj.get("ok") is True:
                res.passed += 1
            else:
                res.failures.append(f"test {obj['test']}: {obj.get('error')}")
        elif obj.get("done") is True:
            done = True
    res.passed = min(res.passed, res.total)
    return done
