"""Memory-mapped teacher soft labels: atomic commits, checked loads, batch reads and the
sampled recompute check."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from dglkd.engine.softlabels import (
    HEADER,
    SoftLabelWriter,
    check_sample,
    open_soft_labels,
    write_soft_labels,
)
from dglkd.errors import DglkdError

N, C, H = 1000, 7, 16


def _arrays(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"logits": torch.randn(N, C, generator=gen) * 8, "hidden": torch.randn(N, H, generator=gen)}


def _siblings(path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


def test_round_trip_float32_batches_and_header(tmp_path):
    arrays = _arrays()
    target = tmp_path / "entry"
    write_soft_labels(target, arrays, meta={"teacher": "gcn"}, batch_rows=300)
    assert _siblings(target) == []  # no staging folder left behind
    store = open_soft_labels(target, verify="sha256")
    assert store.names == ("logits", "hidden") and store.meta == {"teacher": "gcn"}
    assert store.tensor("logits").dtype == torch.float32
    assert torch.equal(store.tensor("logits"), arrays["logits"])
    for batch in torch.randperm(N).split(128):  # rows gathered per batch are the source rows
        assert torch.equal(store.rows("hidden", batch), arrays["hidden"][batch])
    header = json.loads((target / HEADER).read_text())
    entry = header["arrays"]["logits"]
    assert entry["shape"] == [N, C] and entry["bytes"] == N * C * 4 and header["dtype"] == "float32"
    assert entry["sha256"] == hashlib.sha256((target / "logits.bin").read_bytes()).hexdigest()
    with pytest.raises(DglkdError, match=r"no array 'probs'; allowed: logits, hidden"):
        store.rows("probs", torch.arange(3))


def test_float16_halves_the_file_and_reads_float32_rows(tmp_path):
    arrays = _arrays()
    write_soft_labels(tmp_path / "half", arrays, dtype="float16")
    assert (tmp_path / "half" / "logits.bin").stat().st_size == N * C * 2
    store = open_soft_labels(tmp_path / "half")
    assert store.dtype == "float16" and store.tensor("logits").dtype == torch.float16
    ids = torch.tensor([5, 999, 0, 5])
    rows = store.rows("logits", ids)
    assert rows.dtype == torch.float32 and rows.shape == (4, C)
    assert torch.allclose(rows, arrays["logits"][ids], rtol=2**-11, atol=1e-6)
    assert torch.equal(rows, arrays["logits"][ids].half().float())


def test_producer_fills_rows_batch_by_batch(tmp_path):
    source = _arrays()["logits"]
    with SoftLabelWriter(tmp_path / "e", {"logits": (N, C), "probs": (N, C)}, dtype="float16") as writer:
        out = writer.tensor("logits")  # an out= array for a layer-wise producer
        for start in range(0, N, 256):
            out[start : start + 256] = source[start : start + 256].half()
        for batch in torch.randperm(N).split(100):  # node ids in any order, float32 values
            writer.write("probs", batch, source[batch].softmax(-1))
        assert not (tmp_path / "e").exists()  # nothing visible before the commit
    store = open_soft_labels(tmp_path / "e", verify="sha256")
    assert torch.equal(store.tensor("logits"), source.half())
    assert torch.allclose(store.rows("probs", slice(None)), source.softmax(-1), atol=1e-3)


def test_truncated_or_missing_file_is_rejected_naming_it(tmp_path):
    target = write_soft_labels(tmp_path / "e", _arrays())
    data = target / "hidden.bin"
    data.write_bytes(data.read_bytes()[:-4])
    with pytest.raises(DglkdError, match=r"hidden\.bin: 63996 bytes, the header says 64000") as err:
        open_soft_labels(target)
    assert "\n" not in str(err.value)
    data.unlink()
    with pytest.raises(DglkdError, match=r"hidden\.bin: missing"):
        open_soft_labels(target)


def test_changed_content_caught_by_sha256_only(tmp_path):
    target = write_soft_labels(tmp_path / "e", _arrays())
    raw = bytearray((target / "logits.bin").read_bytes())
    raw[100] ^= 0xFF
    (target / "logits.bin").write_bytes(bytes(raw))
    assert open_soft_labels(target, verify="size") is not None  # same size: the cheap check passes
    with pytest.raises(DglkdError, match=r"logits\.bin: content does not match the SHA-256"):
        open_soft_labels(target, verify="sha256")
    with pytest.raises(DglkdError, match=r"verify='md5' unknown; allowed: size, sha256"):
        open_soft_labels(target, verify="md5")


def test_missing_header_is_not_an_entry(tmp_path):
    assert open_soft_labels(tmp_path / "nothing") is None
    target = write_soft_labels(tmp_path / "e", _arrays())
    (target / HEADER).unlink()
    assert open_soft_labels(target) is None
    (target / HEADER).write_text("{not json")
    with pytest.raises(DglkdError, match=r"header\.json: header unreadable"):
        open_soft_labels(target)


def test_killed_writer_leaves_no_entry_and_its_folder_is_removed(tmp_path):
    target = tmp_path / "e"
    old = _arrays(seed=1)
    write_soft_labels(target, old)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from dglkd.engine.softlabels import SoftLabelWriter
        writer = SoftLabelWriter({str(target)!r}, {{"logits": ({N}, {C})}})
        writer.write("logits", slice(0, 10), torch.ones(10, {C}))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    (partial,) = _siblings(target)
    assert partial.startswith(".e.partial-")
    live = SoftLabelWriter(target, {"logits": (N, C)})  # this writer's own folder must survive
    store = open_soft_labels(target)
    assert torch.equal(store.tensor("logits"), old["logits"])  # the older entry is untouched
    assert _siblings(target) == [live.staging.name]
    live.abort()
    assert _siblings(target) == []


def test_failure_inside_the_writer_discards_everything(tmp_path):
    target = tmp_path / "e"
    with pytest.raises(RuntimeError, match="producer crashed"):
        with SoftLabelWriter(target, {"logits": (N, C)}) as writer:
            writer.write("logits", slice(0, 5), torch.zeros(5, C))
            raise RuntimeError("producer crashed")
    assert not target.exists() and _siblings(target) == []
    big = {"logits": torch.full((N, C), 1e6)}
    with pytest.raises(DglkdError, match=r"logits\.bin: 'logits' has values that are not finite in float16"):
        write_soft_labels(target, big, dtype="float16")
    assert not target.exists() and _siblings(target) == []
    with pytest.raises(DglkdError, match=r"cannot write rows into 'logits'"):
        with SoftLabelWriter(target, {"logits": (N, C)}) as writer:
            writer.write("logits", slice(0, 5), torch.zeros(5, C + 1))
    with pytest.raises(DglkdError, match=r"dtype='float64' unknown; allowed: float32, float16"):
        SoftLabelWriter(target, {"logits": (N, C)}, dtype="float64")
    with pytest.raises(DglkdError, match=r"shape \(0, 7\); both sizes must be >= 1"):
        SoftLabelWriter(target, {"logits": (0, C)})


def test_commit_replaces_an_older_entry(tmp_path):
    target = tmp_path / "e"
    write_soft_labels(target, _arrays(seed=1))
    new = _arrays(seed=2)
    write_soft_labels(target, {"logits": new["logits"]})
    store = open_soft_labels(target, verify="sha256")
    assert store.names == ("logits",) and torch.equal(store.tensor("logits"), new["logits"])
    assert not (target / "hidden.bin").exists() and _siblings(target) == []


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_check_sample(tmp_path, dtype):
    weight = torch.randn(H, C, generator=torch.Generator().manual_seed(3)) * 4
    feats = _arrays()["hidden"]

    def teacher(ids: torch.Tensor) -> torch.Tensor:
        return feats[ids] @ weight

    write_soft_labels(tmp_path / "e", {"logits": teacher(torch.arange(N))}, dtype=dtype)
    store = open_soft_labels(tmp_path / "e")
    asked = []
    assert check_sample(store, lambda ids: asked.append(ids) or teacher(ids), count=64, seed=5)
    assert len(asked[0]) == 64 and len(set(asked[0].tolist())) == 64
    assert torch.equal(asked[0], torch.sort(asked[0]).values)
    assert check_sample(store, teacher, count=5000)  # more than N: every node
    assert not check_sample(store, lambda ids: teacher(ids) + 0.05)
    assert not check_sample(store, lambda ids: teacher(ids)[:, :-1])  # wrong shape
