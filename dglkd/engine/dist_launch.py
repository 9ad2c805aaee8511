"""``dglkd launch --local``: DGL's servers and trainers of every ip_config line, on this host.

It sets the environment DGL's ``tools/launch.py`` sets (``DGL_ROLE``, ``DGL_NUM_SAMPLER``,
``DGL_NUM_CLIENT``, ``DGL_CONF_PATH``, ``DGL_IP_CONFIG``, ``DGL_NUM_SERVER``,
``DGL_GRAPH_FORMAT``, ``DGL_SERVER_ID``, ``DGL_DIST_MODE``, ``DGL_GROUP_ID``) and torch's
(``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), and runs the
same command in every process, as DGL does: servers serve inside
``dgl.distributed.initialize`` and trainers train. For real clusters use DGL's
``tools/launch.py`` (ssh) with the same command.

One host, several ip_config lines: DGL names its shared memory after the graph and the
tensors, not the partition (dmlc/dgl#3621), so two partitions' servers on one host
overwrite each other's data. Each line therefore becomes a simulated machine with a
private ``/dev/shm`` (a user + mount namespace, ``unshare``/``nsenter``) holding its
servers and trainers, and its trainers are told their line (``DGLKD_MACHINE_ID``).

Supervision: every process runs in its own process group. The first server or trainer
to die before the trainers are done ends the run: everything is stopped (SIGTERM, then
SIGKILL after a grace period) and one :class:`DglkdError` line names the process and, for
a trainer, its last error line. Logs of every process are kept in a folder named then.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Sequence

from dglkd.errors import DglkdError

LOOPBACK = "127.0.0.1"
DEFAULT_GRACE_S = 5.0
# Trainers done, the servers get this long to notice the shutdown request.
SERVER_EXIT_S = 30.0
MACHINE_ENV = "DGLKD_MACHINE_ID"  # as dglkd.engine.distgraph.MACHINE_ENV (no DGL import here)


@dataclass
class Proc:
    """One started process: what it is, how it is doing, where its output goes."""

    label: str
    role: str  # "server", "trainer" or "namespace"
    popen: subprocess.Popen
    log: Path
    handle: IO = field(repr=False, default=None)  # type: ignore[assignment]

    def alive(self) -> bool:
        return self.popen.poll() is None


def read_ip_config(path: str | Path) -> list[tuple[str, int]]:
    """The (IP, port) of every line of a DGL ip_config ("IP PORT" per machine)."""
    path = Path(path)
    if not path.is_file():
        raise DglkdError(f"--ip-config: file not found: {path}")
    hosts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise DglkdError(f"{path} line {number}: expected 'IP PORT', got {line.strip()!r}")
        hosts.append((parts[0], int(parts[1])))
    if not hosts:
        raise DglkdError(f"{path}: no 'IP PORT' lines")
    return hosts


def _is_local(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return ip == "localhost"


def check_launch(hosts: list[tuple[str, int]], part_config: str | Path, num_servers: int,
                 num_trainers: int, ip_config: str | Path) -> dict:
    """The partition config, after checking it and the counts against the ip_config."""
    part_config = Path(part_config)
    if not part_config.is_file():
        raise DglkdError(f"--part-config: file not found: {part_config}")
    try:
        meta = json.loads(part_config.read_text())
    except json.JSONDecodeError:
        raise DglkdError(f"--part-config: {part_config} is not JSON") from None
    if meta.get("num_parts") != len(hosts):
        raise DglkdError(f"--ip-config: {len(hosts)} lines in {ip_config}, but "
                         f"{part_config} has {meta.get('num_parts')} partitions; give one "
                         "line per partition")
    for ip, _ in hosts:
        if not _is_local(ip):
            raise DglkdError(f"--ip-config: {ip} is not this machine; --local runs every line "
                             "here (for a cluster use DGL's tools/launch.py)")
    ports = [port + s for _, port in hosts for s in range(num_servers)]
    if len(set(ports)) != len(ports):
        raise DglkdError(f"--ip-config: lines of one host need ports at least --num-servers "
                         f"({num_servers}) apart; got {', '.join(str(p) for _, p in hosts)}")
    if num_servers < 1 or num_trainers < 1:
        raise DglkdError("--num-servers / --num-trainers: give 1 or more")
    return meta


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _command(argv: Sequence[str]) -> list[str]:
    """The user's command; ``dglkd ...`` runs with this interpreter (it may not be on PATH)."""
    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise DglkdError("launch: give the command after --, e.g. -- dglkd distill CONFIG")
    if argv[0] == "dglkd":
        return [sys.executable, "-m", "dglkd", *argv[1:]]
    return argv


class Launch:
    """The processes of one local DistDGL run and their supervision."""

    def __init__(self, command: list[str], ip_config: Path, part_config: Path,
                 hosts: list[tuple[str, int]], num_servers: int, num_trainers: int,
                 num_samplers: int, graph_format: str, grace_s: float,
                 say=print) -> None:
        self.command = command
        self.ip_config = ip_config
        self.part_config = part_config
        self.hosts = hosts
        self.num_servers = num_servers
        self.num_trainers = num_trainers
        self.num_samplers = num_samplers
        self.graph_format = graph_format
        self.grace_s = grace_s
        self.say = say
        self.logs = Path(tempfile.mkdtemp(prefix="dglkd-launch-"))
        self.procs: list[Proc] = []
        self.namespaces: list[int | None] = []  # per machine: a pid inside its namespace

    # -- starting --------------------------------------------------------------------------
    def _dgl_env(self) -> dict[str, str]:
        clients = self.num_trainers * (1 + self.num_samplers) * len(self.hosts)
        return {"DGL_NUM_SAMPLER": str(self.num_samplers), "DGL_NUM_CLIENT": str(clients),
                "DGL_CONF_PATH": str(self.part_config), "DGL_IP_CONFIG": str(self.ip_config),
                "DGL_NUM_SERVER": str(self.num_servers),
                "DGL_GRAPH_FORMAT": self.graph_format}

    def _start(self, label: str, role: str, argv: list[str], env: dict[str, str],
               machine: int | None = None) -> Proc:
        log = self.logs / f"{label.replace(' ', '_')}.log"
        handle = open(log, "wb")
        if machine is not None and self.namespaces[machine] is not None:
            # Enter the machine's namespace (its private /dev/shm), then exec the command.
            argv = ["nsenter", f"--target={self.namespaces[machine]}", "--user", "--mount",
                    "--preserve-credentials", "--", *argv]
        # Trainers' output also reaches the terminal through the log's tail on failure;
        # stdout of trainer 0 is the run's own report, so it goes to ours as well.
        stdout = None if label == "trainer 0" else handle
        popen = subprocess.Popen(argv, env={**os.environ, **env}, stdout=stdout,
                                 stderr=handle, stdin=subprocess.DEVNULL,
                                 start_new_session=True)  # own group: stopped as one
        proc = Proc(label, role, popen, log, handle)
        self.procs.append(proc)
        return proc

    def _namespace(self, machine: int) -> int:
        """Start a process holding a user + mount namespace with a private /dev/shm."""
        script = "mount -t tmpfs tmpfs /dev/shm && echo ready && exec sleep 1000000"
        proc = self._start(f"machine {machine} namespace", "namespace",
                           ["unshare", "--user", "--map-root-user", "--mount", "--fork",
                            "sh", "-c", script], {})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "ready" in proc.log.read_text(errors="replace"):
                import psutil

                children = psutil.Process(proc.popen.pid).children(recursive=True)
                if children:
                    return children[-1].pid
            if not proc.alive():
                break
            time.sleep(0.1)
        tail = _last_line(proc.log)
        raise DglkdError(f"launch: cannot give machine {machine} its own /dev/shm with "
                         f"unshare ({tail or 'no output'}); several partitions on one host "
                         "need user namespaces (or run one partition per machine)")

    def start(self) -> None:
        shared = len(self.hosts) > 1  # several lines on this host (see the module doc)
        if shared and shutil.which("unshare") is None:
            raise DglkdError("launch: several ip_config lines on one host need `unshare` "
                             "(util-linux) to give each its own /dev/shm")
        self.namespaces = [self._namespace(m) if shared else None
                           for m in range(len(self.hosts))]
        dgl_env = self._dgl_env()
        for machine in range(len(self.hosts)):
            for local in range(self.num_servers):
                server_id = machine * self.num_servers + local
                self._start(f"server {server_id}", "server", self.command,
                            {**dgl_env, "DGL_ROLE": "server", "DGL_SERVER_ID": str(server_id),
                             "DGL_DIST_MODE": "distributed", "OMP_NUM_THREADS": "1"},
                            machine)
        master_port = _free_port()
        threads = max(1, (os.cpu_count() or 1) // (self.num_trainers * len(self.hosts)))
        for machine in range(len(self.hosts)):
            for local in range(self.num_trainers):
                rank = machine * self.num_trainers + local
                env = {**dgl_env, "DGL_ROLE": "client", "DGL_DIST_MODE": "distributed",
                       "DGL_GROUP_ID": "0",
                       "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads)),
                       "MASTER_ADDR": self.hosts[0][0], "MASTER_PORT": str(master_port),
                       "RANK": str(rank),
                       "WORLD_SIZE": str(self.num_trainers * len(self.hosts)),
                       "LOCAL_RANK": str(local)}
                if shared:
                    env[MACHINE_ENV] = str(machine)
                self._start(f"trainer {rank}", "trainer", self.command, env, machine)
        self.say(f"launch: {len(self.hosts)} machine(s) × ({self.num_servers} server(s) + "
                 f"{self.num_trainers} trainer(s)) on this host; logs in {self.logs}")

    # -- supervising -----------------------------------------------------------------------
    def supervise(self, poll_s: float = 0.2) -> int:
        """Wait for the trainers; the first death of anything else, or a failed trainer,
        ends the run with a DglkdError. Returns the trainers' exit code (0)."""
        trainers = [p for p in self.procs if p.role == "trainer"]
        while True:
            for proc in self.procs:
                code = proc.popen.poll()
                if code is None:
                    continue
                if proc.role == "trainer" and code == 0:
                    continue
                if proc.role == "server" and code == 0:
                    # Servers end cleanly only when trainer 0 shuts them down, which it does
                    # once every trainer has reached DGL's exit barrier: the run is ending.
                    continue
                raise DglkdError(self._failure(proc, code))
            if all(t.popen.poll() == 0 for t in trainers):
                break
            time.sleep(poll_s)
        deadline = time.monotonic() + SERVER_EXIT_S
        while time.monotonic() < deadline and any(
                p.alive() for p in self.procs if p.role == "server"):
            time.sleep(poll_s)
        return 0

    def _failure(self, proc: Proc, code: int) -> str:
        if code < 0:
            try:
                how = f"died (signal {signal.Signals(-code).name})"
            except ValueError:
                how = f"died (signal {-code})"
        else:
            how = f"exited with code {code}"
        detail = _last_line(proc.log, prefer="dglkd: error:") if proc.role == "trainer" else ""
        detail = f": {detail}" if detail else ""
        return (f"launch: {proc.label} {how}{detail}; all {len(self.procs)} processes "
                f"stopped (logs: {self.logs})")

    def stop(self) -> None:
        """SIGTERM every process group still running, SIGKILL after the grace period."""
        import psutil

        groups = []
        for proc in self.procs:
            try:
                groups.append(os.getpgid(proc.popen.pid))
            except ProcessLookupError:
                continue
        members = [p for p in psutil.process_iter() if _pgid(p) in groups]
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        _, stubborn = psutil.wait_procs(members, timeout=self.grace_s)
        for group in groups:
            _signal_group(group, signal.SIGKILL)
        psutil.wait_procs(stubborn, timeout=self.grace_s)
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=self.grace_s)
            except subprocess.TimeoutExpired:
                pass
            if proc.handle is not None:
                proc.handle.close()


def _pgid(process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(log: Path, prefer: str = "") -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    chosen = [line for line in lines if prefer and line.startswith(prefer)]
    line = (chosen or lines or [""])[-1]
    if prefer and line.startswith(prefer):
        line = line[len(prefer):].strip()
    return line if len(line) <= 300 else line[:299] + "…"


def launch_local(command: Sequence[str], ip_config: str | Path, part_config: str | Path,
                 num_servers: int = 1, num_trainers: int = 1, num_samplers: int = 0,
                 graph_format: str = "csc", grace_s: float = DEFAULT_GRACE_S,
                 say=print) -> int:
    """Start DGL's servers and trainers of every ip_config line on this host, run
    ``command`` in each, and return the trainers' exit code (0); a failure is raised as one
    DglkdError line after every process was stopped. Ctrl-C and SIGTERM stop them too."""
    ip_config, part_config = Path(ip_config).resolve(), Path(part_config).resolve()
    hosts = read_ip_config(ip_config)
    check_launch(hosts, part_config, num_servers, num_trainers, ip_config)
    if num_samplers < 0:
        raise DglkdError("--num-samplers: give 0 or more")
    run = Launch(_command(command), ip_config, part_config, hosts, num_servers,
                 num_trainers, num_samplers, graph_format, grace_s, say)

    def on_term(_signum, _frame):  # SIGTERM to the launcher: stop everything, as Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    ok = False
    try:
        run.start()
        code = run.supervise()
        ok = True
        return code
    finally:
        run.stop()
        signal.signal(signal.SIGTERM, previous)
        if ok:
            shutil.rmtree(run.logs, ignore_errors=True)


__all__ = ["launch_local", "read_ip_config"]
