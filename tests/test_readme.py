"""The README's code as a user pastes it: every ```python block runs as written in a fresh
process from a scratch folder, and every script in examples/ runs with the command line
the README gives it. Schedules are shortened only through the knobs the README names
(an ``epochs = ...`` line in a block, an example's ``--steps`` / ``--epochs`` flag)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.ogb_layout import write_tiny_ogb

README = (REPO / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
KNOB = re.compile(r"^epochs = \d+", flags=re.M)
# The README's command line of every example script.
COMMANDS = {Path(script).name: [script, *shlex.split(flags.split("#")[0])]
            for script, flags in re.findall(r"^python (examples/\S+\.py)(.*)$", README,
                                            flags=re.M)}
# Each example's knob, set short; a new example needs an entry here.
SHORT = {"hkd_image_batches.py": ["--steps", "90"],  # 6 epochs of the 1,000 images
         "distill_gcn_ogb.py": ["--epochs", "5"]}


def run_as_user(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A user's shell in ``cwd``: this checkout's dglkd importable (as after ``make``), a
    home of its own (dglkd's dataset cache and DGL's config start empty)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    env.pop("DGLBACKEND", None)  # what dglkd sets by itself
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "RecipeStepWarning" not in result.stderr, result.stderr[-3000:]
    return result


def test_the_readme_has_python_blocks_and_example_commands():
    assert len(BLOCKS) >= 3
    assert sorted(COMMANDS) == sorted(p.name for p in (REPO / "examples").glob("*.py"))
    assert all(name in SHORT for name in COMMANDS)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_python_block_runs_as_written(index, tmp_path):
    block = BLOCKS[index]
    trains = "for epoch in range(epochs)" in block
    assert trains == bool(KNOB.search(block)), "a block that trains names its epochs knob"
    (tmp_path / "block.py").write_text(KNOB.sub("epochs = 2", block))
    run_as_user([sys.executable, "block.py"], tmp_path)


def test_the_image_batch_example_prints_the_student_alone_beside_the_distilled_one(tmp_path):
    argv = COMMANDS["hkd_image_batches.py"]
    out = run_as_user([sys.executable, str(REPO / argv[0]), *argv[1:],
                       *SHORT["hkd_image_batches.py"]], tmp_path).stdout
    found = re.search(r"teacher ([\d.]+), student alone ([\d.]+), HKD\+KD student ([\d.]+); "
                      r"HKD\+KD loss ([\d.]+) → ([\d.]+)", out)
    assert found, out
    teacher, alone, student, first, last = map(float, found.groups())
    assert teacher > 0.7 and alone > 0.25 and student > 0.25, out  # chance is 0.1
    assert last < 0.8 * first, out


def test_the_ogb_example_runs_on_a_dataset_in_ogbs_layout(tmp_path):
    """ogbn-arxiv itself is not here (nothing downloads in tests): a tiny graph written in
    OGB's own on-disk layout under that name stands in for it, through ``--root``."""
    write_tiny_ogb(str(tmp_path / "ogb" / "ogbn_arxiv"), split="time")
    argv = COMMANDS["distill_gcn_ogb.py"]
    out = run_as_user([sys.executable, str(REPO / argv[0]), *argv[1:], "--root",
                       str(tmp_path / "ogb"), *SHORT["distill_gcn_ogb.py"]], tmp_path).stdout
    assert re.search(r"ogbn-arxiv: GCN teacher [\d.]+, MLP alone [\d.]+, distilled MLP [\d.]+",
                     out), out
