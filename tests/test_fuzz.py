"""A seeded fuzz of the ``dglkd`` command (hypothesis): every config key, model option and
method constant set to hostile values, ``--set`` overrides, and damaged run-folder and
cache files. A case fails on a traceback, a multi-line or unprintable error, a hang, a
run that ends with exit 0 and non-finite numbers, or a damaged file changing what a user
reads without a word. The full campaign (>= 1,500 cases, full and read-only disks) is
``benchmarks/fuzz_campaign.py``; this is its bounded, seeded subset."""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import os
import random
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_campaign",
                                               ROOT / "benchmarks" / "fuzz_campaign.py")
campaign = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(campaign)

KEYS = campaign.key_catalog()
CASE_SECONDS = 120
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
VALUES = st.one_of(st.sampled_from(campaign.HOSTILE), st.integers(-2**70, 2**70),
                   st.floats(), st.text(max_size=12), st.booleans(), st.none(),
                   st.lists(st.integers(-3, 300), max_size=3),
                   st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
OVERRIDE_TEXT = st.one_of(st.sampled_from(["0", "-1", "", "null", "[1, 2]", "{a: 1}", "1e308",
                                           ".nan", ".inf", "{{", "[", "'x", "2147483648"]),
                          st.text(max_size=10))


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def hang(_signum, _frame):
        raise TimeoutError(f"no answer within {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def answer(argv: list[str]) -> dict[str, Any]:
    with time_limit(CASE_SECONDS):
        return campaign.answer_for([str(a) for a in argv])


def assert_clean(result: dict[str, Any], case: str, allowed=("error", "ran")) -> str:
    outcome = campaign.classify(result)
    assert outcome in allowed, f"{outcome} for {case}: {campaign.last_words(result)}"
    return outcome


@pytest.fixture(scope="module", autouse=True)
def scratch_folder(tmp_path_factory) -> Iterator[None]:
    """Cases run in a scratch folder, as the campaign's workers do: a fuzzed relative
    ``cache_dir`` or ``--out`` (``[``, control characters) lands there, not in the repo."""
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def bases(planetoid_root, tmp_path_factory) -> dict[str, dict[str, Any]]:
    cache = str(tmp_path_factory.mktemp("fuzz_cache"))
    return {"graph": campaign.graph_base(cache, planetoid_root),
            "image": campaign.image_base(cache)}


@FUZZ
@given(key=st.sampled_from(sorted(KEYS)), value=VALUES, kind=st.sampled_from(["graph", "image"]),
       owner=st.randoms(use_true_random=False))
def test_any_config_value_is_run_or_refused_in_one_line(bases, tmp_path, key, value, kind,
                                                        owner):
    raw = copy.deepcopy(bases[kind])
    node = raw
    for part in key[:-1]:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[key[-1]] = value
    if key in campaign.OWNERS:  # a method's constant mostly comes with its method
        raw["method"]["name"] = owner.choice(campaign.OWNERS[key])
    config = campaign.write_yaml(tmp_path / "case.yaml", raw)
    assert_clean(answer(["distill", config, "--out", tmp_path / "runs"]),
                 f"{'.'.join(key)}={value!r:.80} on {kind}")


@FUZZ
@given(items=st.lists(st.tuples(st.sampled_from(sorted(KEYS)), OVERRIDE_TEXT),
                      min_size=1, max_size=3))
def test_any_override_is_run_or_refused_in_one_line(bases, tmp_path, items):
    config = campaign.write_yaml(tmp_path / "base.yaml", bases["graph"])
    argv = ["distill", config, "--out", tmp_path / "runs"]
    for key, text in items:
        argv += ["--set", f"{'.'.join(key)}={text}"]
    assert_clean(answer(argv), " ".join(map(str, argv[4:])))


@pytest.fixture(scope="module")
def damage_bench(bases, tmp_path_factory):
    base = dict(bases["graph"], baseline=True)
    return campaign.DamageBench(answer, tmp_path_factory.mktemp("damage"), base)


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_a_damaged_file_is_refused_or_recovered_never_used(damage_bench, data):
    target = data.draw(st.sampled_from(damage_bench.files))
    kind = data.draw(st.sampled_from(campaign.DAMAGE))
    action = data.draw(st.sampled_from(["resume", "evaluate"]))
    label, outcome, said = damage_bench.trial(0, target, kind, random.Random(0), action)
    assert outcome in ("error", "recovered", "unaffected"), f"{outcome}: {label}: {said}"


@pytest.mark.parametrize("label", ["non-UTF-8", "UTF-16", "key 1", "key null", "deep nesting",
                                   "deep mapping", "cut mid-value", "binary", "NUL bytes"])
def test_a_broken_config_file_is_one_line(tmp_path, label):
    cases = dict(campaign.file_cases(tmp_path))
    assert_clean(answer(cases[f"config file: {label}"]), label, allowed=("error",))


@pytest.mark.parametrize("label", ["out is a file", "out under /proc", "out under /dev/null",
                                   "out name too long", "cache_dir is a file",
                                   "cache_dir under /proc", "cache_dir too long",
                                   "config is a folder", "evaluate a file"])
def test_an_unusable_path_is_one_line_naming_it(tmp_path, label):
    cases = dict(campaign.file_cases(tmp_path))
    result = answer(cases[label])
    assert_clean(result, label, allowed=("error",))
    assert not list((tmp_path / "runs").glob("*")), "a failed start leaves no run folder"


def test_the_nan_triggers_stop_with_one_line(tmp_path, planetoid_root):
    for label, argv in campaign.nan_cases(tmp_path, planetoid_root):
        assert_clean(answer(argv), label, allowed=("error",))


class _ScriptedWorker(campaign.Worker):
    """The campaign's worker protocol, answered by a script: ``slow`` writes a file every
    half second for 3 s before answering, anything else sleeps without a word."""

    SCRIPT = f"""
import json, pathlib, sys, time
for line in sys.stdin:
    if json.loads(line)["argv"] == ["slow"]:
        for i in range(6):
            pathlib.Path(f"progress{{i}}").write_text("x")
            time.sleep(0.5)
    else:
        time.sleep(60)
    answer = {{"code": 0, "stderr": "", "stdout": "", "escaped": None}}
    sys.stdout.write({campaign.MARK!r} + json.dumps(answer) + "\\n")
    sys.stdout.flush()
"""

    def _start(self):
        import subprocess
        import sys

        return subprocess.Popen([sys.executable, "-c", self.SCRIPT], cwd=self.cwd,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                bufsize=1)


def test_a_case_that_keeps_writing_is_slow_and_a_silent_one_is_a_hang(tmp_path):
    worker = _ScriptedWorker(tmp_path)
    try:
        assert campaign.classify(worker.run(["slow"], timeout=1.5)) == "ran"
        assert campaign.classify(worker.run(["silent"], timeout=1.5)) == "hang"
    finally:
        worker.stop()
