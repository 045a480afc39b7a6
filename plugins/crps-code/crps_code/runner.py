"""The program that runs inside the sandbox: candidate code, then its tests, one by one.

Run as `python -I runner.py JOB RESULT_FD` by `crps_code.sandbox`; stdlib only (it is copied
into the job's temporary directory and executed there, as an unprivileged user when the host
allows it). The job file gives the rlimits (applied first), the candidate program, setup
code and test statements. Each
outcome is written at once as a JSON line to RESULT_FD, so the tests that finished before a
time or memory limit ended the run still count.

Before the candidate runs, an audit hook (PEP 578) refuses what a test never needs: process
creation, signals to other processes, network calls, native code (ctypes), writes outside the
job's directory and reads of other processes' environment. The OS-level limits set by the
parent (rlimits, namespaces, uid) are the real walls; the hook names the violation in the
verdict and is a second wall where the OS ones are missing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import Any

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
BLOCKED_EVENTS = {
    "os.fork": "process creation", "os.forkpty": "process creation",
    "os.posix_spawn": "process creation", "os.spawn": "process creation",
    "os.exec": "process creation", "os.system": "process creation",
    "subprocess.Popen": "process creation", "pty.spawn": "process creation",
    "os.killpg": "signal to another process", "signal.pthread_kill": "signal to a thread",
    "socket.connect": "network", "socket.bind": "network", "socket.sendto": "network",
    "socket.sendmsg": "network", "socket.getaddrinfo": "network",
    "socket.gethostbyname": "network", "socket.gethostbyaddr": "network",
    "ctypes.dlopen": "native code", "ctypes.dlsym": "native code",
    "ctypes.call_function": "native code", "resource.setrlimit": "changing limits",
    "resource.prlimit": "changing limits",
}
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
               "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
               "os.replace"}
MAX_WRITE_OPENS = 64  # files a candidate may open for writing (bounds disk use with FSIZE)


class SandboxViolation(PermissionError):
    """A blocked operation (raised inside the candidate's code)."""


def install_guard(root: str, report: Any) -> None:
    root = os.path.realpath(root)
    opens = [0]
    seen: set[str] = set()

    def inside(path: Any) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor
        try:
            p = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return p == root or p.startswith(root + os.sep)

    def deny(what: str, detail: str) -> None:
        msg = f"{what} blocked ({detail})"
        if msg not in seen:
            seen.add(msg)
            report({"violation": msg})
        raise SandboxViolation(f"sandbox: {msg}")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in BLOCKED_EVENTS:
            deny(BLOCKED_EVENTS[event], event)
        elif event == "os.kill":
            if args[0] != os.getpid():
                deny("signal to another process", f"os.kill({args[0]}, {args[1]})")
        elif event == "open":
            path, mode, flags = args
            if isinstance(path, int) or path is None:
                return
            name = os.fsdecode(path)
            if "environ" in name and name.startswith("/proc/"):
                deny("reading another environment", name)
            writing = (flags & WRITE_FLAGS) if isinstance(flags, int) and flags >= 0 else (
                isinstance(mode, str) and any(c in mode for c in "wax+"))
            if writing:
                if not inside(name):
                    deny("write outside the sandbox directory", name)
                opens[0] += 1
                if opens[0] > MAX_WRITE_OPENS:
                    deny("too many files written", name)
        elif event in PATH_EVENTS:
            for a in args:
                if isinstance(a, str | bytes) and not inside(a):
                    deny("change outside the sandbox directory", f"{event} {os.fsdecode(a)}")
        elif event == "import" and args[0] in ("ctypes", "_ctypes", "cffi"):
            deny("native code", f"import {args[0]}")

    sys.addaudithook(hook)


def apply_limits(limits: dict[str, int]) -> None:
    """The rlimits, set here (before any candidate code is read) rather than between fork
    and exec in the parent, which is unsafe in a threaded parent. Soft = hard, so the
    candidate cannot raise them (only a privileged process could, which it is not)."""
    import resource

    for name, value in limits.items():
        which = getattr(resource, name)
        hard = value + 1 if name == "RLIMIT_CPU" else value  # SIGXCPU, then SIGKILL
        resource.setrlimit(which, (value, hard))


def main() -> int:
    job_path, fd = sys.argv[1], int(sys.argv[2])
    with open(job_path, encoding="utf-8") as fh:
        job = json.load(fh)
    apply_limits(job.get("limits", {}))
    out = os.fdopen(fd, "w", buffering=1, encoding="utf-8")

    def report(obj: dict[str, Any]) -> None:
        try:
            out.write(json.dumps(obj) + "\n")
            out.flush()
        except (OSError, ValueError):
            pass

    def out_of_cpu(signum: int, frame: Any) -> None:
        report({"fatal": "CPU time limit exceeded"})
        os._exit(3)

    # The soft RLIMIT_CPU signal; a candidate that replaces the handler meets the hard limit.
    signal.signal(signal.SIGXCPU, out_of_cpu)
    if job.get("guard", True):
        install_guard(job["root"], report)
    ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": __builtins__}

    def run(code: str, label: str) -> str | None:
        try:
            exec(compile(code, label, "exec"), ns)
        except BaseException as exc:  # SystemExit, KeyboardInterrupt and all: the test failed
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" (line {tb[-1].lineno})" if tb and tb[-1].filename == label else ""
            return f"{type(exc).__name__}: {str(exc)[:200]}{where}"
        return None

    err = run(job["program"], "<candidate>")
    if err is None and job.get("setup"):
        err = run(job["setup"], "<test setup>")
        if err is not None:
            err = f"test setup failed: {err}"
    elif err is not None:
        err = f"candidate program failed: {err}"
    entry = job["entry_point"]
    if err is None and not callable(ns.get(entry)):
        err = f"the program does not define function '{entry}'"
    if err is not None:
        report({"fatal": err})
        return 0
    ns["candidate"] = ns[entry]
    broken: str | None = None
    for i, item in enumerate(job["items"]):
        if broken is not None:
            if item["test"]:
                report({"test": i, "ok": False, "error": broken})
            continue
        err = run(item["code"], f"<test {i}>")
        if item["test"]:
            report({"test": i, "ok": err is None, "error": err})
        elif err is not None:
            broken = f"test setup failed: {err}"
    report({"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
