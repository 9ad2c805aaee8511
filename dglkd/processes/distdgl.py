"""``dglkd launch --local``: DistDGL's servers and trainers of every ip_config line on this host.

DGL's own ``tools/launch.py`` (in DGL's source, not in the wheel) starts them over ssh on a
cluster; this starts the same processes here with the same environment variables, for
trying a distributed config on one machine and for tests. DGL 2.1 names its shared memory
by graph, not by partition (dmlc/dgl#3621), so the lines of one host would collide in
``/dev/shm``: each line runs as a simulated machine with its own ``/dev/shm`` (a user and
mount namespace from ``unshare``, entered with ``nsenter``).

Every process runs in the caller's folder, so relative paths in the command work; the
one :class:`~dglkd.processes.supervisor.Supervisor` starts, watches and stops them. The
first server or trainer to die before the trainers are done ends the run: everything is
stopped and one :class:`DglkdError` line names the process and, for a trainer, its last
error line. Logs of every process are kept in a folder named then.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from dglkd.engine.parallel import MACHINE_ENV
from dglkd.errors import DglkdError
from dglkd.processes.supervisor import (DEFAULT_GRACE_S, Child, Supervisor, free_port,
                                        last_line)

# Trainers done, the servers get this long to notice the shutdown request.
SERVER_EXIT_S = 30.0


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
    """The processes of one local DistDGL run."""

    def __init__(self, supervisor: Supervisor, command: list[str], ip_config: Path,
                 part_config: Path, hosts: list[tuple[str, int]], num_servers: int,
                 num_trainers: int, num_samplers: int, graph_format: str) -> None:
        self.supervisor = supervisor
        self.command = command
        self.ip_config = ip_config
        self.part_config = part_config
        self.hosts = hosts
        self.num_servers = num_servers
        self.num_trainers = num_trainers
        self.num_samplers = num_samplers
        self.graph_format = graph_format
        self.namespaces: list[int | None] = []  # per machine: a pid inside its namespace
        self.roles: dict[str, str] = {}  # child label -> server, trainer or namespace

    def _dgl_env(self) -> dict[str, str]:
        clients = self.num_trainers * (1 + self.num_samplers) * len(self.hosts)
        return {"DGL_NUM_SAMPLER": str(self.num_samplers), "DGL_NUM_CLIENT": str(clients),
                "DGL_CONF_PATH": str(self.part_config), "DGL_IP_CONFIG": str(self.ip_config),
                "DGL_NUM_SERVER": str(self.num_servers),
                "DGL_GRAPH_FORMAT": self.graph_format}

    def _start(self, label: str, role: str, env: dict[str, str], machine: int) -> Child:
        argv = self.command
        if self.namespaces[machine] is not None:
            # Enter the machine's namespace (its private /dev/shm), then exec the command in
            # the caller's folder: entering a mount namespace starts at its root otherwise.
            # --wdns opens the folder inside the namespace (--wd would keep a folder of the
            # old one, and renames between the two then fail across mounts).
            argv = ["nsenter", f"--target={self.namespaces[machine]}", "--user", "--mount",
                    "--preserve-credentials", f"--wdns={os.getcwd()}", "--", *argv]
        self.roles[label] = role
        # Trainer 0's stdout is the run's own report, so it goes to ours as well.
        return self.supervisor.start(label, argv, env,
                                     stdout_to_caller=label == "trainer 0")

    def _namespace(self, machine: int) -> int:
        """Start a process holding a user + mount namespace with a private /dev/shm."""
        import psutil

        label = f"machine {machine} namespace"
        self.roles[label] = "namespace"
        script = "mount -t tmpfs tmpfs /dev/shm && echo ready && exec sleep 1000000"
        child = self.supervisor.start(label, ["unshare", "--user", "--map-root-user",
                                              "--mount", "--fork", "sh", "-c", script], {})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if "ready" in child.log.read_text(errors="replace"):
                children = psutil.Process(child.popen.pid).children(recursive=True)
                if children:
                    return children[-1].pid
            if child.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise DglkdError(f"launch: cannot give machine {machine} its own /dev/shm with "
                         f"unshare ({last_line(child.log) or 'no output'}); several partitions "
                         "on one host need user namespaces (or run one partition per machine)")

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
                self._start(f"server {server_id}", "server",
                            {**dgl_env, "DGL_ROLE": "server", "DGL_SERVER_ID": str(server_id),
                             "DGL_DIST_MODE": "distributed", "OMP_NUM_THREADS": "1"}, machine)
        master_port = free_port()
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
                self._start(f"trainer {rank}", "trainer", env, machine)

    def _role(self, child: Child) -> str:
        return self.roles[child.label]

    def run(self, say: Callable[[str], None]) -> None:
        """Start everything, wait for the trainers, give the servers time to leave."""
        self.start()
        say(f"launch: {len(self.hosts)} machine(s) × ({self.num_servers} server(s) + "
            f"{self.num_trainers} trainer(s)) on this host; logs in {self.supervisor.logs}")
        # A clean exit is no failure: servers end cleanly only when trainer 0 shuts them
        # down, which it does once every trainer has reached DGL's exit barrier.
        trainers = [c for c in self.supervisor.children if self._role(c) == "trainer"]

        def describe(child: Child, how: str, message: str | None) -> str:
            code = child.popen.returncode
            how = f"died ({how})" if code < 0 else f"exited with code {code}"
            detail = f": {message}" if message and self._role(child) == "trainer" else ""
            return (f"launch: {child.label} {how}{detail}; all "
                    f"{len(self.supervisor.children)} processes stopped "
                    f"(logs: {self.supervisor.logs})")

        self.supervisor.watch(lambda: all(t.popen.poll() == 0 for t in trainers), describe)
        self.supervisor.linger(lambda c: self._role(c) == "server", SERVER_EXIT_S)


def launch_local(command: Sequence[str], ip_config: str | Path, part_config: str | Path,
                 num_servers: int = 1, num_trainers: int = 1, num_samplers: int = 0,
                 graph_format: str = "csc", grace_s: float = DEFAULT_GRACE_S,
                 say: Callable[[str], None] = print) -> int:
    """Start DGL's servers and trainers of every ip_config line on this host, run
    ``command`` in each (in this folder), and return the trainers' exit code (0); a
    failure is raised as one DglkdError line after every process was stopped. Ctrl-C and
    SIGTERM stop them too."""
    ip_config, part_config = Path(ip_config).resolve(), Path(part_config).resolve()
    hosts = read_ip_config(ip_config)
    check_launch(hosts, part_config, num_servers, num_trainers, ip_config)
    if num_samplers < 0:
        raise DglkdError("--num-samplers: give 0 or more")
    logs = Path(tempfile.mkdtemp(prefix="dglkd-launch-"))
    with Supervisor(grace_s, logs) as supervisor:
        Launch(supervisor, _command(command), ip_config, part_config, hosts, num_servers,
               num_trainers, num_samplers, graph_format).run(say)
    shutil.rmtree(logs, ignore_errors=True)  # kept when the run failed: the error names it
    return 0


__all__ = ["launch_local", "read_ip_config"]
