"""DistDGL end to end on Cora, on loopback only: partition, launch, train, fail cleanly.

Every test runs the real command line in subprocesses with a hard timeout and checks that
no process it started is left behind (psutil, by the test's own temporary folder in the
command lines).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "DGLBACKEND": "pytorch", "OUTDATED_IGNORE": "1", "PYTHONPATH": str(REPO)}
DGLKD = [sys.executable, "-m", "dglkd"]
sys.path.insert(0, str(REPO / "benchmarks"))
from dist_vs_local import one_machine_student  # noqa: E402 - the benchmark's paired arm

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="DistDGL runs on Linux")


def _ports(count: int) -> list[int]:
    """Free loopback ports at least 2 apart (a line's servers use PORT, PORT+1, ...)."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if all(abs(port - p) > 2 for p in ports):
            ports.append(port)
    return ports


def _left_behind(marker: str) -> list[psutil.Process]:
    """Processes whose command line mentions ``marker`` (this test's folder) or that run
    in a folder under it."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if proc.pid != os.getpid() and (marker in " ".join(proc.info["cmdline"] or [])
                                            or (proc.info["cwd"] or "").startswith(marker)):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _partition(parts: int, out: Path) -> Path:
    done = subprocess.run([*DGLKD, "partition", str(REPO / "configs/cora_gcn_glnn.yaml"),
                           "--parts", str(parts), "--out", str(out)],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return out / "cora_gcn_glnn.json"


def _config(tmp: Path, part_config: Path, ip_config: Path | None, teacher_epochs: int,
            student_epochs: int) -> Path:
    data = {"name": "dist", "part_config": str(part_config)}
    if ip_config is not None:
        data["ip_config"] = str(ip_config)
    config = {
        "name": "cora_dist", "seed": 0, "n_runs": 1, "device": "cpu", "data": data,
        "cache_dir": str(tmp / "cache"), "baseline": False,
        "teacher": {"model": "sage", "hidden": 64, "layers": 2, "dropout": 0.5},
        "teacher_train": {"epochs": teacher_epochs, "lr": 0.01, "weight_decay": 5e-4,
                          "batch_size": 64, "fanouts": [-1, -1], "eval_batch_size": 1024,
                          "checkpoint_every": 100},
        "student": {"model": "mlp", "hidden": 256, "layers": 2, "dropout": 0.6},
        "method": {"name": "glnn", "lam": 0.0, "temperature": 1.0},
        "train": {"epochs": student_epochs, "lr": 0.01, "weight_decay": 5e-4,
                  "batch_size": 256, "eval_batch_size": 1024, "checkpoint_every": 100},
        "log": {"progress": False, "tensorboard": False, "embedding_projector": False},
    }
    path = tmp / "dist.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory) -> Path:
    return _partition(2, tmp_path_factory.mktemp("parts2"))


@pytest.fixture(scope="module")
def one_part(tmp_path_factory) -> Path:
    return _partition(1, tmp_path_factory.mktemp("parts1"))


def _launch_argv(tmp: Path, part_config: Path, config: Path) -> list[str]:
    ip_config = tmp / "ip_config.txt"
    return [*DGLKD, "launch", "--local", "--ip-config", str(ip_config), "--part-config",
            str(part_config), "--num-servers", "1", "--num-trainers", "1", "--",
            "dglkd", "distill", str(config), "--out", str(tmp / "runs")]


def _standalone(config: Path, out: Path, timeout: int = 150) -> subprocess.CompletedProcess:
    """``dglkd distill`` outside a launch (no DGL_* variables): DistDGL's standalone mode."""
    env = {k: v for k, v in ENV.items() if not k.startswith("DGL_")}
    return subprocess.run([*DGLKD, "distill", str(config), "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _ip_config(tmp: Path) -> Path:
    path = tmp / "ip_config.txt"
    path.write_text("".join(f"127.0.0.1 {port}\n" for port in _ports(2)))
    return path


def test_partition_launch_distill_cora_as_the_readme_writes_it(two_parts, tmp_path):
    """From the user's folder, every path relative, as in the README: the launcher runs
    every process there."""
    meta = json.loads((two_parts.parent / "dglkd.json").read_text())
    assert meta["num_parts"] == 2 and meta["num_hops"] == 2 and meta["num_classes"] == 7
    shutil.copytree(two_parts.parent, tmp_path / "parts")
    _ip_config(tmp_path)
    config = _config(tmp_path, Path("parts") / two_parts.name, Path("ip_config.txt"), 30, 80)
    argv = [*DGLKD, "launch", "--local", "--ip-config", "ip_config.txt", "--part-config",
            f"parts/{two_parts.name}", "--num-servers", "1", "--num-trainers", "1", "--",
            "dglkd", "distill", "dist.yaml", "--out", "runs"]
    try:
        done = subprocess.run(argv, env=ENV, cwd=tmp_path, capture_output=True, text=True,
                              timeout=240)
    finally:
        left = _left_behind(str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not left, [p.pid for p in left]
    results = json.loads(next((tmp_path / "runs").glob("cora_dist-*/results.json")).read_text())
    assert results["teacher"]["test_acc"] >= 0.78, results["teacher"]
    # The distilled MLP follows how sharp its teacher's soft labels are, i.e. the epoch the
    # best-validation rule took the teacher from: one machine alone gave 66.4 and 78.1 on
    # the same seed and command (issue 23; benchmarks/dist_vs_local.py). So it is held to
    # one machine's student phase distilled from this run's own teacher: over 25 seeds
    # (fan-outs [10, 10]) they differed by -0.3 +- 0.7 points, -1.6 to +1.0.
    recipe = {**yaml.safe_load(config.read_text()), "data": {"name": "cora"}}
    teacher = next((tmp_path / "runs").glob("cora_dist-*/models/teacher_seed0.pt"))
    one_machine = one_machine_student(recipe, str(teacher), tmp_path / "one_machine")
    assert abs(results["student"]["test_acc"] - one_machine) <= 0.025, \
        (results["student"], one_machine)


HANDOFF_CALLS = 20


def handoff_trainer(part_config: str, ip_config: str, out: str) -> None:
    """A trainer of the hand-off test (run by ``dglkd launch``): write the soft labels of
    ``HANDOFF_CALLS`` differently initialised SAGE teachers through the engine, and after
    each compare every row, read back on this trainer, with the teacher's logits from one
    full-graph pass over the DistGraph's edges in this process. ``out/handoff<rank>.json``
    gets the mismatching rows of each call, and how many rows this trainer computes and
    how many of them lie in another machine's partition."""
    import torch

    from dglkd import deps
    from dglkd.config import config_from_dict
    from dglkd.engine import diststore, parallel
    from dglkd.engine.graph import GraphBackend

    dgl = deps.dgl("the hand-off test")
    config = config_from_dict({
        "name": "handoff", "device": "cpu", "log": {"progress": False, "tensorboard": False},
        "data": {"name": "dist", "part_config": part_config, "ip_config": ip_config},
        "teacher": {"model": "sage", "hidden": 16, "layers": 2},
        "student": {"model": "mlp", "hidden": 16, "layers": 2},
        "teacher_train": {"batch_size": 64}, "train": {"batch_size": 64},
        "method": {"name": "glnn"}})

    def body() -> int:
        diststore.initialize(config)
        parallel.setup_from_env("cpu")
        backend = GraphBackend(config, torch.device("cpu"), lambda _m: None)
        backend.load(0)
        store = backend.train
        nodes = torch.arange(store.num_nodes)
        src, dst = store.graph.find_edges(torch.arange(store.graph.num_edges()))
        whole = dgl.graph((src, dst), num_nodes=store.num_nodes)
        feat = store.gather("feat")
        mismatches = []
        for call in range(HANDOFF_CALLS):
            torch.manual_seed(call)
            teacher = backend.new_model(config.teacher, "teacher").eval()
            stored = backend.knowledge(teacher, [], None).logits[nodes]
            with torch.no_grad():
                exact = teacher(whole, feat)
            mismatches.append(int((~torch.isclose(stored, exact, atol=1e-4)).any(1).sum()))
            store.barrier()  # every trainer has read before the next call writes
        book = store.graph.get_partition_book()
        written = store.own_nodes()
        foreign = int((book.nid2partid(written) != book.partid).sum())
        Path(out, f"handoff{parallel.world().rank}.json").write_text(json.dumps(
            {"mismatches": mismatches, "written": len(written), "foreign": foreign}))
        parallel.barrier()
        parallel.teardown()
        return 0

    diststore.run_trainer(body)


def test_every_soft_label_row_arrives(two_parts, tmp_path):
    """The teacher's soft labels written by both trainers into the shared DistTensor are,
    on both trainers right after the hand-off, the teacher's exact logits of every node,
    call after call. A row pushed to the other machine's server may land after the
    barrier: before each trainer wrote its own partition's rows only (force_even shares
    gave one trainer 29-39 rows of the other's partition), 3 of 5 runs of this test saw
    those rows stale on the other trainer, or rows computed from them wrong, in 1 to 5 of
    the calls."""
    ip_config = _ip_config(tmp_path)
    program = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); "
               "from test_distdgl import handoff_trainer; handoff_trainer(*sys.argv[1:])")
    argv = [*DGLKD, "launch", "--local", "--ip-config", str(ip_config), "--part-config",
            str(two_parts), "--num-servers", "1", "--num-trainers", "1", "--",
            sys.executable, "-c", program, str(two_parts), str(ip_config), str(tmp_path)]
    try:
        done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=240)
    finally:
        left = _left_behind(str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    assert not left, [p.pid for p in left]
    trainers = [json.loads((tmp_path / f"handoff{rank}.json").read_text()) for rank in (0, 1)]
    # Each trainer writes rows of its own partition only, and together every node's.
    assert [t["foreign"] for t in trainers] == [0, 0], trainers
    assert sum(t["written"] for t in trainers) == 2708, trainers
    mismatches = [t["mismatches"] for t in trainers]
    assert [len(calls) for calls in mismatches] == [HANDOFF_CALLS] * 2
    assert not any(map(any, mismatches)), f"rows differing per call, per trainer: {mismatches}"


def test_standalone_one_partition(one_part, tmp_path):
    config = _config(tmp_path, one_part, None, 3, 3)
    done = _standalone(config, tmp_path / "runs")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "mode standalone" in done.stdout
    assert next((tmp_path / "runs").glob("cora_dist-*/results.json")).is_file()


def test_standalone_serves_what_one_machine_serves(one_part, tmp_path):
    """The one graph backend over DistDGL: HKD on the batch's native graph (the servers'
    in-edges among its nodes) with a memory bank of every node, and FitNet on the
    teacher's hidden features (written layer by layer into DistTensors), on a GCN student
    of sampled blocks; the run ends with results and nothing left running."""
    config = _config(tmp_path, one_part, None, 1, 1)
    recipe = yaml.safe_load(config.read_text())
    recipe["student"] = {"model": "gcn", "hidden": 16, "layers": 2}
    recipe["train"]["fanouts"] = [5, 5]
    recipe["method"] = {"terms": {"ce": 1.0, "fitnet": 1.0, "hkd": {
        "weight": 0.1, "relation": "native", "negatives": "memory"}}}
    config.write_text(yaml.safe_dump(recipe))
    try:
        done = _standalone(config, tmp_path / "runs")
    finally:
        left = _left_behind(str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(next((tmp_path / "runs").glob("cora_dist-*/results.json")).read_text())
    assert results["formula"] == "loss = 1*ce + 1*fitnet + 0.1*hkd"
    assert 0.0 <= results["student"]["test_acc"] <= 1.0
    assert not left, [p.pid for p in left]


def test_standalone_refuses_two_partitions(two_parts, tmp_path):
    config = _config(tmp_path, two_parts, None, 1, 1)
    done = _standalone(config, tmp_path / "runs", timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("dglkd: error: data.part_config")


@pytest.mark.parametrize("victim", ["trainer 1", "server 1"])
def test_a_death_ends_the_run(two_parts, tmp_path, victim):
    """Kill one process mid-run: the launcher stops all of them and says so in one line."""
    config = _config(tmp_path, two_parts, _ip_config(tmp_path), 500, 1)
    launcher = subprocess.Popen(_launch_argv(tmp_path, two_parts, config), env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    role, number = victim.split()
    wanted = {"DGL_ROLE": "client" if role == "trainer" else "server",
              "RANK" if role == "trainer" else "DGL_SERVER_ID": number}
    try:
        deadline = time.monotonic() + 120
        target = None
        while target is None and time.monotonic() < deadline:
            for proc in _left_behind(str(config)):
                try:
                    env = proc.environ()
                except psutil.Error:
                    continue
                if all(env.get(k) == v for k, v in wanted.items()) and "nsenter" not in \
                        proc.cmdline()[0]:
                    target = proc
            time.sleep(0.5)
        assert target is not None, f"{victim} never started"
        # Let the run get going (trainers connected and training) before the kill.
        for line in launcher.stdout:
            if "training sage" in line:
                break
        target.send_signal(signal.SIGKILL)
        _, err = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait(30)
        time.sleep(0.5)
        left = _left_behind(str(tmp_path))
        for proc in left:
            proc.kill()
    assert launcher.returncode == 2, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("dglkd: error:")]
    assert len(lines) == 1 and f"launch: {victim} died (signal SIGKILL)" in lines[0], err[-2000:]
    assert not left, [p.pid for p in left]
