"""Fault campaign: run ``dglkd`` the way users' mistakes and machines' failures come, and
count what happens.

Cases: fuzzed configs (a key of the schema, a model option or a method constant set to a
hostile value), ``--set`` overrides, broken config files and paths, the NaN triggers,
damaged run-folder and cache files (each followed by ``--resume``, ``evaluate`` or a new
``distill`` on the damaged cache) and, where this user may mount a tmpfs, read-only and
full file systems. Every case runs ``dglkd.cli.main`` in a long-lived worker process (one
import of torch for all cases), killed and replaced when a case hangs.

Outcome classes, printed with their counts:
  error        exit 2 and one line ``dglkd: error: ...``
  ran          exit 0, every number in results.json finite
  recovered    a damaged file was named, discarded and its phase trained again
  unaffected   a damaged file the action does not read; results equal the reference
and the failures (exit 1 when any occurs):
  traceback    an exception escaped, or a traceback on stderr
  multi-line   exit 2 with more than one line, or control characters in the line
  hang         no answer, and no file written, within the case's time limit
  nan-exit0    exit 0 with a non-finite number in results.json
  silent-wrong exit 0, results differ from the undamaged reference, damage not named

    python benchmarks/fuzz_campaign.py                 # >= 1,500 configs/overrides, 60 damaged files
    python benchmarks/fuzz_campaign.py --configs 200 --damage 20   # a quick look
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import random
import select
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
FAILURES = ("traceback", "multi-line", "hang", "nan-exit0", "silent-wrong")
MARK = "@@fuzz-case "

# Values a user (or a careless script) puts anywhere.
HOSTILE = [0, -1, 1, 2, 3, -7, 0.5, 1.5, -0.5, 1e-30, 1e30, 1e308, 2**31, 2**63, 10**12,
           "abc", "", "two", None, True, False, [], {}, [1, 2], [0], [-1, -1], {"a": 1},
           "nan", float("nan"), float("inf"), "cpu", "cuda", "mps", "meta", "cpu:7", "xla",
           "hpu", "vulkan", "cuda:99", "\x1b[31mred", "tab\there", "line\nbreak", "a" * 5000,
           "/proc/dglkd", "/dev/null/x", "../../etc", "mean", "batch", "layer", "gcn",
           "sum", "l1", "hidden", "pool", "stage1", "sgd", "cosine", "step"]
UNKNOWN_KEYS = ["hiden", "lr_", "epoch", "\x1b[0mkey", "key\nwith break", "ünï", "1", "null"]


# -- the configs cases start from ----------------------------------------------------------
def graph_base(cache: str, root: str | None = None) -> dict[str, Any]:
    """Cora (its processed copy under ``root``), GCN 8 → MLP 8, two epochs a phase: a
    clean run takes about a second."""
    data = {"name": "cora", **({"root": root} if root else {})}
    return {"name": "fuzz_cora", "seed": 0, "n_runs": 1, "cache_dir": cache, "baseline": False,
            "data": data,
            "teacher": {"model": "gcn", "hidden": 8, "layers": 2},
            "student": {"model": "mlp", "hidden": 8, "layers": 2},
            "method": {"name": "glnn"},
            "teacher_train": {"epochs": 2, "checkpoint_every": 1},
            "train": {"epochs": 2, "checkpoint_every": 1},
            "log": {"progress": False, "tensorboard": False, "embedding_projector": False}}


def image_base(cache: str) -> dict[str, Any]:
    """sklearn's 8x8 digits, cnn_tiny → cnn_tiny, one epoch of 64 images a phase."""
    return {"name": "fuzz_digits", "seed": 0, "n_runs": 1, "cache_dir": cache,
            "baseline": False,
            "data": {"name": "digits", "train_size": 64, "val_size": 32},
            "teacher": {"model": "cnn_tiny"}, "student": {"model": "cnn_tiny"},
            "method": {"name": "kd"},
            "teacher_train": {"epochs": 1, "batch_size": 32},
            "train": {"epochs": 1, "batch_size": 32},
            "log": {"progress": False, "tensorboard": False, "embedding_projector": False}}


def key_catalog() -> dict[tuple[str, ...], Any]:
    """Every key a config can set (schema fields, model options, method constants), with
    its default (None where it has none)."""
    import inspect

    from dglkd.config import Config
    from dglkd.methods.base import METHODS
    from dglkd.models import MODELS

    keys: dict[tuple[str, ...], Any] = {}
    for name, field in Config.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        if sub and name not in ("teacher", "student", "method"):
            keys.update({(name, child): f.default for child, f in sub.items()})
        else:
            keys[(name,)] = None
    for side in ("teacher", "student"):
        keys[(side, "model")] = None
        for model in ("gcn", "gat", "sage", "mlp", "cnn_tiny"):
            for option in inspect.signature(MODELS.get(model)).parameters.values():
                if option.name not in ("num_classes", "in_features"):
                    keys[(side, option.name)] = option.default
    keys[("method", "name")] = None
    for name in METHODS.names():
        for constant, field in METHODS.get(name).Params.model_fields.items():
            keys[("method", constant)] = field.default
            OWNERS.setdefault(("method", constant), []).append(name)
    return keys


# The methods owning a constant: a mutated constant usually comes with its method, so
# the case trains instead of stopping at "unknown constant".
OWNERS: dict[tuple[str, ...], list[str]] = {}


def mutate(rng: random.Random, base: dict[str, Any], keys: dict[tuple[str, ...], Any],
           names: dict[str, list[str]]) -> tuple[dict[str, Any], list[str]]:
    """One to three keys of ``base`` set to hostile or plausible values."""
    raw = json.loads(json.dumps(base))
    changed = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        path = list(rng.choice(sorted(keys)))
        value = _value_for(rng, path, keys[tuple(path)], names)
        if rng.random() < 0.05:
            path[-1] = rng.choice(UNKNOWN_KEYS)
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
        changed.append(f"{'.'.join(path)}={value!r:.60}")
        if tuple(path) in OWNERS and rng.random() < 0.8:
            raw["method"]["name"] = rng.choice(OWNERS[tuple(path)])
            changed.append(f"method.name={raw['method']['name']}")
    return raw, changed


def _value_for(rng: random.Random, path: list[str], default: Any,
               names: dict[str, list[str]]) -> Any:
    """Half the time a value of the key's own kind (registered names, small numbers near
    the default), so valid-but-unusual combinations train and are checked too."""
    if rng.random() < 0.5:
        return rng.choice(HOSTILE)
    if path[-1] == "model":
        return rng.choice(names["models"])
    if path[-1] == "name" and path[0] == "method":
        return rng.choice(names["methods"])
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return rng.choice([0, 1, 2, 3, 4, 8, 16, default * 2, max(default // 2, 1)])
    if isinstance(default, float):
        return rng.choice([0.0, 0.05, 0.1, 0.5, 0.9, 0.99, default * 2, default / 2])
    return rng.choice(HOSTILE)


def override_items(rng: random.Random, keys: dict[tuple[str, ...], Any]) -> list[str]:
    items = []
    for _ in range(rng.randint(1, 3)):
        key = ".".join(rng.choice(sorted(keys))) if rng.random() > 0.1 \
            else rng.choice(UNKNOWN_KEYS)
        text = rng.choice(["0", "-1", "abc", "", "null", "[1, 2]", "{a: 1}", "1e308",
                           "nan", ".inf", "True", "{{", "[", "'unclosed", "2147483648",
                           "cuda:7", "\x1b[1m", "1.5", "200"])
        items.append(f"{key}={text}" if rng.random() > 0.05 else key)
    return items


# -- the worker: cli.main for each case it is sent ----------------------------------------
def answer_for(argv: list[str]) -> dict[str, Any]:
    """Run ``dglkd.cli.main(argv)`` here: exit code, stdout, stderr and whatever escaped."""
    from dglkd import cli

    out, err = io.StringIO(), io.StringIO()
    escaped = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exc:  # argparse: usage line + one error line, exit 2
            code = exc.code if isinstance(exc.code, int) else 2
        except BaseException:  # what the campaign is here to find
            code, escaped = None, traceback.format_exc()
    return {"code": code, "stderr": err.getvalue()[-4000:], "stdout": out.getvalue()[-4000:],
            "escaped": escaped}


def serve() -> None:
    """Read one JSON case per line; answer with one marked JSON line per case."""
    import warnings

    warnings.simplefilter("ignore")
    for line in sys.stdin:
        answer = answer_for(json.loads(line)["argv"])
        sys.__stdout__.write(MARK + json.dumps(answer) + "\n")
        sys.__stdout__.flush()


def last_write(folder: Path) -> float:
    """When anything under ``folder`` was last written (its newest modification time; links
    not followed, files that vanish while looked at skipped)."""
    newest = 0.0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


class Worker:
    """A ``--worker`` process; replaced after a hang.

    A case that keeps writing under the work folder (checkpoints, phase results: a valid
    but long config, ``n_runs=200``, or any case on a loaded machine) is slow, not hung:
    its time limit restarts while it writes, up to ``MAX_EXTENSIONS`` times."""

    MAX_EXTENSIONS = 10

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.process: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "DGLBACKEND": "pytorch", "OMP_NUM_THREADS": "1"}
        return subprocess.Popen([sys.executable, __file__, "--worker"], cwd=self.cwd, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def run(self, argv: list[str], timeout: float) -> dict[str, Any]:
        if self.process is None or self.process.poll() is not None:
            self.process = self._start()
        self.process.stdin.write(json.dumps({"argv": argv}) + "\n")
        self.process.stdin.flush()
        deadline, extensions = time.monotonic() + timeout, 0
        while True:
            if time.monotonic() >= deadline:
                if extensions == self.MAX_EXTENSIONS or \
                        time.time() - last_write(self.cwd) > timeout:
                    break
                deadline, extensions = time.monotonic() + timeout, extensions + 1
            ready, _, _ = select.select([self.process.stdout], [], [], 1.0)
            if not ready:
                continue
            line = self.process.stdout.readline()
            if not line:  # the worker died (a crash in C code, the OOM killer)
                self.process = None
                return {"code": None, "stderr": "", "stdout": "", "escaped": "worker died"}
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        self.stop()
        return {"code": None, "stderr": "", "stdout": "", "escaped": None, "hang": True}

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


# -- classification -----------------------------------------------------------------------
def non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(non_finite(v) for v in value)
    return False


def run_folder(answer: dict[str, Any]) -> Path | None:
    for line in answer["stdout"].splitlines():
        if line.startswith("run folder: "):
            return Path(line[len("run folder: "):])
    return None


def last_words(answer: dict[str, Any]) -> str:
    """What a failing case said last: its traceback's final line, or stderr's."""
    text = answer.get("escaped") or answer["stderr"] or answer["stdout"]
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[:600] if lines else "(nothing)"


def classify(answer: dict[str, Any], folder: Path | None = None,
             file: str = "results.json") -> str:
    """The outcome class of one answer (on exit 0, the numbers of ``folder/file``)."""
    if answer.get("hang"):
        return "hang"
    if answer["escaped"] or "Traceback (most recent call last)" in answer["stderr"]:
        return "traceback"
    lines = [line for line in answer["stderr"].splitlines() if line.strip()]
    if answer["code"] == 2:
        errors = [line for line in lines if line.startswith(("dglkd: error:", "usage: "))]
        clean = len(lines) == len(errors) and sum(l.startswith("dglkd") for l in lines) == 1
        printable = all(ch.isprintable() for line in lines for ch in line)
        return "error" if clean and printable else "multi-line"
    if answer["code"] != 0:
        return "traceback"
    folder = folder or run_folder(answer)
    if folder is None or not (folder / file).is_file():
        return "ran"  # nothing written to check (train-teacher, a test of paths)
    try:
        numbers = json.loads((folder / file).read_text(), parse_constant=float)
    except ValueError:
        return "silent-wrong"  # exit 0 with a results file nobody can read
    return "nan-exit0" if non_finite(numbers) else "ran"


# -- case families ------------------------------------------------------------------------
def config_cases(rng: random.Random, work: Path, count: int) -> Iterator[tuple[str, list[str]]]:
    from dglkd.methods.base import METHODS
    from dglkd.models import MODELS

    keys = key_catalog()
    names = {"models": MODELS.names(), "methods": METHODS.names()}
    cache = str(work / "cache")
    for index in range(count):
        base = graph_base(cache) if rng.random() < 0.8 else image_base(cache)
        if index % 2:
            raw, changed = mutate(rng, base, keys, names)
            path = write_yaml(work / "configs" / f"case{index}.yaml", raw)
            yield " ".join(changed), ["distill", str(path), "--out", str(work / "runs")]
        else:
            path = write_yaml(work / "configs" / f"base{index}.yaml", base)
            items = override_items(rng, keys)
            argv = ["distill", str(path), "--out", str(work / "runs")]
            for item in items:
                argv += ["--set", item]
            yield "--set " + " --set ".join(items), argv


def write_yaml(path: Path, raw: dict[str, Any]) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def file_cases(work: Path) -> Iterator[tuple[str, list[str]]]:
    """Config files no parser should choke on, and paths that cannot be written."""
    import yaml

    good = yaml.safe_dump(graph_base(str(work / "cache")))
    bodies: dict[str, bytes] = {
        "non-UTF-8": b"name: caf\xe9\n" + good.encode(),
        "UTF-16": good.encode("utf-16"),
        "key 1": b"1: x\n" + good.encode(),
        "key null": b"null: x\n" + good.encode(),
        "deep nesting": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
        "deep mapping": b"".join(b"  " * i + b"k:\n" for i in range(3000)) + b"  " * 3000 + b"v\n",
        "cut mid-value": good.encode()[: len(good) // 2] + b"'unclosed",
        "binary": bytes(range(256)) * 4,
        "empty": b"",
        "comment only": b"# nothing here\n",
        "a list": b"- a\n- b\n",
        "a number": b"42\n",
        "NUL bytes": b"name: a\x00b\n",
    }
    for label, body in bodies.items():
        path = work / "files" / f"{label.replace(' ', '_')}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        yield f"config file: {label}", ["distill", str(path), "--out", str(work / "runs")]
    config = write_yaml(work / "files" / "good.yaml", graph_base(str(work / "cache")))
    a_file = work / "files" / "a_file"
    a_file.write_text("x")
    yield "config is a folder", ["distill", str(work / "files"), "--out", str(work / "runs")]
    yield "config missing", ["distill", str(work / "nope.yaml")]
    yield "config under /proc", ["distill", "/proc/self/nope.yaml"]
    for label, out in [("out is a file", a_file), ("out under /proc", "/proc/dglkd"),
                       ("out under /dev/null", "/dev/null/x"), ("out empty", ""),
                       ("out name too long", work / ("o" * 300))]:
        yield label, ["distill", str(config), "--out", str(out)]
    for label, value in [("cache_dir is a file", a_file), ("cache_dir under /proc", "/proc/x"),
                         ("cache_dir too long", "c" * 5000), ("name too long", "n" * 5000)]:
        key = "name" if label.startswith("name") else "cache_dir"
        yield label, ["distill", str(config), "--out", str(work / "runs"),
                      "--set", f"{key}={value}"]
    yield "resume a folder with no run", ["distill", "--resume", str(work / "files")]
    yield "resume beside a CONFIG", ["distill", str(config), "--resume", str(work / "files")]
    yield "evaluate a file", ["evaluate", str(a_file)]
    yield "evaluate nothing", ["evaluate", str(work / "missing")]


def nan_cases(work: Path, root: str | None = None) -> Iterator[tuple[str, list[str]]]:
    """Settings that drive training to NaN/inf: each must stop with one line."""
    config = write_yaml(work / "nan" / "base.yaml", graph_base(str(work / "cache"), root))
    out = ["--out", str(work / "runs")]
    for label, items in [
        ("lr 1e30", ["train.lr=1e30"]),
        ("teacher lr 1e30", ["teacher_train.lr=1e30"]),
        ("kd temperature 1e-30", ["method.name=kd", "method.temperature=1e-30"]),
        ("glnn temperature 1e-30", ["method.temperature=1e-30"]),
        ("weight decay 1e30", ["train.weight_decay=1e30"]),
        ("sgd momentum 5", ["train.optimizer=sgd", "train.momentum=5", "train.lr=10"]),
    ]:
        yield label, ["distill", str(config), *out, *[a for i in items for a in ("--set", i)]]
    graph = _user_graph(work / "nan" / "nan_features.bin", root, nan_rows=10)
    yield "user graph with NaN features", ["distill", str(config), *out,
                                           "--set", "data={name: graph_file, path: %s}" % graph]
    graph = _user_graph(work / "nan" / "label99.bin", root, bad_label=99)
    yield "user graph with label 99", ["distill", str(config), *out,
                                       "--set", "data={name: graph_file, path: %s}" % graph]


def _user_graph(path: Path, root: str | None, nan_rows: int = 0,
                bad_label: int | None = None) -> Path:
    """Cora as a user's saved DGLGraph, with NaN features or an out-of-range label."""
    import dgl

    from dglkd.data.catalog import load

    graph = load("cora", root=root).graph
    graph.ndata["feat"][:nan_rows] = float("nan")
    if bad_label is not None:
        graph.ndata["label"][graph.ndata["test_mask"].nonzero()[:5, 0]] = bad_label
    path.parent.mkdir(parents=True, exist_ok=True)
    dgl.save_graphs(str(path), [graph])
    return path


# -- damaged artifacts ----------------------------------------------------------------------
DAMAGE = ("truncate", "zero", "random", "flip", "empty", "append")


def damage(path: Path, kind: str, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        data = data[: len(data) // 2]
    elif kind == "zero":
        data = bytearray(len(data))
    elif kind == "random":
        data = bytearray(rng.randbytes(len(data)))
    elif kind == "flip":
        for _ in range(8):
            if data:
                data[rng.randrange(len(data))] ^= 0xFF
    elif kind == "empty":
        data = bytearray()
    else:
        data += b"\x00junk"
    path.write_bytes(bytes(data))


def scores(folder: Path, file: str) -> Any:
    """The accuracies of a results or evaluation file (what a user would read)."""
    data = json.loads((folder / file).read_text())
    if file == "evaluation.json":
        return {k: round(v["test_acc"], 6) for k, v in data.items()}
    return {role: [round(run["test_acc"], 6) for run in data[role]["runs"]]
            for role in ("teacher", "baseline", "student") if role in data}


class DamageBench:
    """A finished run and its teacher cache, copied per trial, one file of the copy
    damaged, then ``--resume``, ``evaluate`` or a new ``distill`` on the damaged cache;
    what the user reads is compared with the undamaged reference.

    ``run`` answers an argv (the worker's ``run`` or :func:`answer_for`)."""

    def __init__(self, run: Any, work: Path, base: dict[str, Any]) -> None:
        self.run, self.work = run, work
        # The run's config (under its manifest, so not editable) names a link; each trial
        # points it at its own copy of the cache, so no trial can poison another's.
        self.link, self.pristine = work / "cache", work / "cache_ref"
        self.pristine.mkdir(parents=True)
        self.link.symlink_to(self.pristine)
        self.config = write_yaml(work / "config.yaml", dict(base, cache_dir=str(self.link)))
        answer = run(["distill", str(self.config), "--out", str(work / "runs")])
        self.reference = run_folder(answer)
        assert self.reference is not None and answer["code"] == 0, last_words(answer)
        run(["evaluate", str(self.reference)])
        self.expected = {file: scores(self.reference, file)
                         for file in ("results.json", "evaluation.json")}
        self.files = [p for p in sorted(self.reference.rglob("*")) if p.is_file()
                      and p.name != "evaluation.json" and not p.name.endswith(".tmp")]
        self.files += [p for p in sorted(self.pristine.rglob("*")) if p.is_file()]

    def trial(self, index: int, target: Path, kind: str, rng: random.Random,
              action: str | None = None) -> tuple[str, str, str]:
        trial = self.work / f"trial{index}"
        run_copy = trial / "runs" / self.reference.name
        shutil.copytree(self.reference, run_copy)
        shutil.copytree(self.pristine, trial / "cache")
        self.link.unlink()
        self.link.symlink_to(trial / "cache")
        in_cache = target.is_relative_to(self.pristine)
        damaged = (trial / "cache" / target.relative_to(self.pristine) if in_cache
                   else run_copy / target.relative_to(self.reference))
        damage(damaged, kind, rng)
        action = "distill" if in_cache else action or ("resume", "evaluate")[index % 2]
        argv, folder = {
            "distill": (["distill", str(self.config), "--out", str(trial / "fresh")], None),
            "resume": (["distill", "--resume", str(run_copy)], run_copy),
            "evaluate": (["evaluate", str(run_copy)], run_copy)}[action]
        file = "evaluation.json" if action == "evaluate" else "results.json"
        answer = self.run(argv)
        outcome = classify(answer, folder, file)
        if outcome == "ran":
            folder = folder or run_folder(answer)
            said = answer["stdout"] + answer["stderr"]
            same = folder is not None and (folder / file).is_file() and \
                scores(folder, file) == self.expected[file]
            named = damaged.name in said or "damaged" in said or "does not reproduce" in said
            if same:
                outcome = "recovered" if named else "unaffected"
            else:
                outcome = "recovered" if named else "silent-wrong"
        shutil.rmtree(trial, ignore_errors=True)
        return f"{kind} {damaged.relative_to(trial)} then {action}", outcome, last_words(answer)


def damage_cases(rng: random.Random, worker: Worker, work: Path, count: int,
                 timeout: float) -> Iterator[tuple[str, str, str]]:
    base = graph_base("")
    base.update(n_runs=2, baseline=True)
    bench = DamageBench(lambda argv: worker.run(argv, timeout), work / "damage", base)
    for index in range(count):
        yield bench.trial(index, rng.choice(bench.files), DAMAGE[index % len(DAMAGE)], rng)


# -- full and read-only file systems --------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str, read_only: bool = False) -> Iterator[bool]:
    """A tiny tmpfs at ``path`` (True) or nothing where this user may not mount (False)."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], capture_output=True)


def filesystem_cases(worker: Worker, work: Path, timeout: float) -> Iterator[tuple[str, str]]:
    config = write_yaml(work / "fs" / "base.yaml", graph_base(str(work / "fs" / "cache")))
    for label, size, read_only, key in [("full disk as --out", "48k", False, "out"),
                                        ("full disk as cache_dir", "48k", False, "cache"),
                                        ("read-only --out", "1m", True, "out"),
                                        ("read-only cache_dir", "1m", True, "cache")]:
        mount = work / "fs" / label.replace(" ", "_")
        with tmpfs(mount, size, read_only) as mounted:
            if not mounted:
                yield f"{label} (skipped: this user cannot mount a tmpfs)", "skipped", ""
                continue
            argv = ["distill", str(config), "--out", str(mount if key == "out" else work / "runs")]
            if key == "cache":
                argv += ["--set", f"cache_dir={mount}"]
            answer = worker.run(argv, timeout)
            yield label, classify(answer), last_words(answer)
    # A read-only cache after the teacher trained: the cached teacher is only read.
    with tmpfs(work / "fs" / "ro_after", "4m") as mounted:
        if mounted:
            argv = ["distill", str(config), "--out", str(work / "runs"),
                    "--set", f"cache_dir={work / 'fs' / 'ro_after'}"]
            worker.run(argv, timeout)
            subprocess.run(["mount", "-o", "remount,ro", str(work / "fs" / "ro_after")])
            answer = worker.run(argv, timeout)
            yield ("read-only cache after the teacher trained", classify(answer),
                   last_words(answer))


# -- the campaign ---------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=1500,
                        help="fuzzed configs and override sets (default 1500)")
    parser.add_argument("--damage", type=int, default=60, help="damaged files (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per case")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve()
        return 0
    sys.path.insert(0, str(ROOT))
    rng = random.Random(args.seed)
    counts: dict[str, Counter] = {}
    failures: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dglkd-fuzz-") as tmp:
        work = Path(tmp)
        worker = Worker(work)
        try:
            def judged(cases):
                for label, argv in cases:
                    answer = worker.run(argv, args.timeout)
                    yield label, classify(answer), last_words(answer)

            families = {
                "configs and overrides": judged(config_cases(rng, work, args.configs)),
                "config files and paths": judged(file_cases(work)),
                "NaN triggers": judged(nan_cases(work)),
                "damaged files": damage_cases(rng, worker, work, args.damage, args.timeout),
                "file systems": filesystem_cases(worker, work, args.timeout),
            }
            for family, outcomes in families.items():
                counts[family] = Counter()
                for label, outcome, detail in outcomes:
                    counts[family][outcome] += 1
                    if outcome == "ran" and family != "configs and overrides":
                        print(f"  ran: [{family}] {label}", flush=True)  # few: say which
                    if outcome in FAILURES:
                        failures.append(f"{outcome}: [{family}] {label}\n    {detail}")
                        print(failures[-1], flush=True)
                print(f"{family}: {dict(counts[family])}", flush=True)
        finally:
            worker.stop()
            shutil.rmtree(work, ignore_errors=True)
    total = sum(counts.values(), Counter())
    print(f"\n{sum(total.values())} cases in {time.monotonic() - started:.0f} s")
    for family, counter in counts.items():
        print(f"  {family:<24} " + ", ".join(f"{k} {v}" for k, v in sorted(counter.items())))
    print("  failures: " + ", ".join(f"{k} {total[k]}" for k in FAILURES))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
