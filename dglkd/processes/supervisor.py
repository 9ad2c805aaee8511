"""The one process supervisor: start processes, watch them, name the first to fail, stop
everyone.

Both ways dglkd runs several processes go through it: ``--nproc N`` (DDP ranks on this
host, :mod:`dglkd.processes.ranks`) and ``dglkd launch --local`` (DistDGL's servers and
trainers, :mod:`dglkd.processes.distdgl`). Every child runs in the caller's folder (so
relative paths in its command work) in a process group of its own (so it is stopped with
whatever it started); the first child to fail before the run is done ends the run with one
line naming it and how it ended; :meth:`Supervisor.stop` sends SIGTERM to every group and,
after a grace period, SIGKILL, so no process outlives the run — on success, failure,
Ctrl-C or SIGTERM to the supervisor alike.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Callable, Sequence

from dglkd.errors import DglkdError

LOOPBACK = "127.0.0.1"
DEFAULT_GRACE_S = 5.0
ERROR_PREFIX = "dglkd: error:"


def free_port() -> int:
    """A TCP port free on the loopback interface right now (the OS picks it).

    Another program could take it before the child binds it; that shows up as the child
    failing with "address already in use", and a new launch picks another port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def exit_reason(code: int) -> str:
    """How a process ended, as people say it: ``signal SIGKILL`` or ``exit code 3``."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


@dataclass
class Child:
    """One started process.

    ``record``: a JSON file the child writes when it fails (``message``, ``time`` and
    ``traceback``), if it keeps one; otherwise its last ``dglkd: error:`` line in ``log``
    says what went wrong. ``finished``: whether its work is done, after which its exit (or
    a hang on the way out) no longer counts against the run.
    """

    label: str
    popen: subprocess.Popen
    log: Path | None = None
    record: Path | None = None
    finished: Callable[[], bool] = lambda: False
    handle: IO | None = field(default=None, repr=False)

    def failed(self) -> bool:
        code = self.popen.poll()
        return code is not None and code != 0 and not self.finished()

    def error(self) -> tuple[str | None, float, str | None]:
        """(its own account of the failure, when it gave it, the traceback), or Nones."""
        if self.record is not None and self.record.exists():
            record = json.loads(self.record.read_text())
            return record["message"], record["time"], record.get("traceback")
        line = last_line(self.log, prefer=ERROR_PREFIX) if self.log is not None else ""
        return (line or None), (self.log.stat().st_mtime if line else 0.0), None


def last_line(log: Path, prefer: str = "") -> str:
    """The last line starting with ``prefer`` (the prefix dropped), else the last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    chosen = [line for line in lines if prefer and line.startswith(prefer)]
    line = (chosen or lines or [""])[-1]
    if prefer and line.startswith(prefer):
        line = line[len(prefer):].strip()
    return one_line(line, 300)


class Supervisor:
    """Children of one run: :meth:`start` them, :meth:`watch` until the run is done,
    :meth:`stop` them (also when leaving the ``with`` block by an error, Ctrl-C or a
    SIGTERM to this process)."""

    def __init__(self, grace_s: float = DEFAULT_GRACE_S, logs: Path | None = None) -> None:
        self.grace_s = grace_s
        self.logs = logs
        self.children: list[Child] = []
        self._previous_term = None

    def start(self, label: str, argv: Sequence[str], env: dict[str, str], *,
              own_log: bool = True, stdout_to_caller: bool = False,
              record: Path | None = None,
              finished: Callable[[], bool] | None = None) -> Child:
        """Start ``argv`` in the caller's folder with ``env`` added to this environment.
        ``own_log``: its stderr (and stdout, unless ``stdout_to_caller``) go to a log file
        in ``logs``; otherwise both go where this process's go."""
        log = handle = None
        if own_log and self.logs is not None:
            log = self.logs / f"{label.replace(' ', '_')}.log"
            handle = open(log, "wb")
        popen = subprocess.Popen(list(argv), env={**os.environ, **env}, cwd=os.getcwd(),
                                 stdout=None if stdout_to_caller else handle, stderr=handle,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        child = Child(label, popen, log, record, finished or (lambda: False), handle)
        self.children.append(child)
        return child

    def watch(self, done: Callable[[], bool], describe: Callable[[Child, str, str | None], str],
              poll_s: float = 0.2) -> None:
        """Wait until ``done()``; at the first failed child raise one :class:`DglkdError`
        line, ``describe(child, how it ended, its own account or None)``, carrying the
        child's traceback (``worker_traceback``) when it kept one.

        Of several failed children the one that died without a word is the cause (a peer's
        death surfaces in the others as an error); among those that explained themselves,
        the earliest explanation wins.
        """
        while not done():
            failed = [child for child in self.children if child.failed()]
            if failed:
                child = min(failed, key=lambda c: (c.error()[0] is not None, c.error()[1]))
                message, _, traceback = child.error()
                error = DglkdError(describe(child, exit_reason(child.popen.returncode), message))
                error.worker_traceback = traceback  # type: ignore[attr-defined]
                raise error
            time.sleep(poll_s)

    def linger(self, labels: Callable[[Child], bool], seconds: float,
               poll_s: float = 0.2) -> None:
        """Give the children ``labels`` picks up to ``seconds`` to exit by themselves."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and any(
                c.popen.poll() is None for c in self.children if labels(c)):
            time.sleep(poll_s)

    def stop(self) -> None:
        """SIGTERM every child's process group and what the children started, SIGKILL
        after the grace period; close the logs."""
        import psutil

        groups = set()
        for child in self.children:
            try:
                groups.add(os.getpgid(child.popen.pid))
            except ProcessLookupError:
                continue
        members = [p for p in psutil.process_iter() if _group_of(p) in groups]
        members += [d for child in self.children for d in _descendants(child.popen.pid)]
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        for process in members:
            _signal(process, signal.SIGTERM)
        _, stubborn = psutil.wait_procs(members, timeout=self.grace_s)
        for group in groups:
            _signal_group(group, signal.SIGKILL)
        for process in stubborn:
            _signal(process, signal.SIGKILL)
        psutil.wait_procs(stubborn, timeout=self.grace_s)
        for child in self.children:
            try:
                child.popen.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                pass
            if child.handle is not None:
                child.handle.close()

    def __enter__(self) -> "Supervisor":
        def on_term(_signum, _frame):  # SIGTERM to the supervisor: stop everything, as Ctrl-C
            raise KeyboardInterrupt

        if threading.current_thread() is threading.main_thread():  # where signals arrive
            self._previous_term = signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self.stop()
        finally:
            if self._previous_term is not None:
                signal.signal(signal.SIGTERM, self._previous_term)


def _group_of(process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal(process, sig: int) -> None:
    import psutil

    try:
        process.send_signal(sig)
    except psutil.Error:
        pass


__all__ = ["Child", "DEFAULT_GRACE_S", "LOOPBACK", "Supervisor", "exit_reason", "free_port",
           "last_line", "one_line"]
