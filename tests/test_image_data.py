"""Image datasets: bundled MNIST, CIFAR python layout, digits, augmentation, minibatches."""
from __future__ import annotations

import gzip
import pickle
import shutil

import numpy as np
import pytest
import torch

from dglkd.data.images import (
    BUNDLED_MNIST,
    augment_batch,
    iterate_minibatches,
    load_cifar,
    load_digits,
    load_mnist,
    stratified_order,
)
from dglkd.errors import DglkdError


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


# --------------------------------------------------------------------------------- MNIST


def test_bundled_mnist_sizes_and_normalisation(mnist):
    assert mnist.images.shape == (10_000, 1, 28, 28)
    assert mnist.images.dtype == torch.float32 and mnist.labels.dtype == torch.long
    assert mnist.split_sizes() == {"train": 1000, "val": 1000, "test": 8000}
    assert mnist.num_classes == 10 and not mnist.flip
    everything = torch.cat(list(mnist.splits.values()))
    assert torch.equal(everything.sort().values, torch.arange(10_000))
    assert abs(mnist.images.mean().item()) < 0.1 and abs(mnist.images.std().item() - 1) < 0.1
    train_counts = torch.bincount(mnist.labels[mnist.splits["train"]], minlength=10)
    assert train_counts.min() >= 85 and train_counts.max() <= 120  # stratified draw


def test_mnist_split_is_seeded(mnist):
    again = load_mnist(seed=0)
    other = load_mnist(seed=1, train_size=100, val_size=50)
    assert all(torch.equal(mnist.splits[s], again.splits[s]) for s in mnist.splits)
    assert torch.equal(mnist.images, again.images)
    assert other.split_sizes() == {"train": 100, "val": 50, "test": 9850}
    assert not torch.equal(mnist.splits["train"][:100], other.splits["train"])


def test_mnist_from_a_folder_of_uncompressed_files(mnist, tmp_path):
    for gz in BUNDLED_MNIST.glob("t10k-*.gz"):
        (tmp_path / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    task = load_mnist(tmp_path)
    assert torch.equal(task.images, mnist.images) and torch.equal(task.labels, mnist.labels)


def test_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(DglkdError, match="has neither t10k-images"):
        load_mnist(tmp_path)
    shutil.copy(BUNDLED_MNIST / "t10k-images-idx3-ubyte.gz", tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    with pytest.raises(DglkdError, match="t10k-labels-idx1-ubyte.gz: file not found"):
        load_mnist(tmp_path)
    labels.write_bytes(b"not gzip at all")
    with pytest.raises(DglkdError, match="t10k-labels-idx1-ubyte.gz: cannot read"):
        load_mnist(tmp_path)
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 8))  # images' magic
    with pytest.raises(DglkdError, match="t10k-labels-idx1-ubyte.gz: not an idx file"):
        load_mnist(tmp_path)
    labels.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05\x01"))  # 1 of 5
    with pytest.raises(DglkdError, match="t10k-labels-idx1-ubyte.gz: truncated"):
        load_mnist(tmp_path)
    with pytest.raises(DglkdError, match="no such folder"):
        load_mnist(tmp_path / "missing")


def test_split_sizes_are_checked():
    with pytest.raises(DglkdError, match="train_size \\+ val_size = 10000"):
        load_mnist(train_size=9000, val_size=1000)
    with pytest.raises(DglkdError, match="train_size"):
        load_digits(train_size=0)


def test_stratified_order_keeps_class_shares_in_every_prefix():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    order = stratified_order(labels, seed=3)
    assert torch.equal(order.sort().values, torch.arange(100))
    first = torch.bincount(labels[order[:10]], minlength=3)
    assert first.tolist() == [6, 3, 1]
    assert not torch.equal(order, stratified_order(labels, seed=4))


def test_digits():
    task = load_digits(train_size=500, val_size=200, seed=0)
    assert task.images.shape == (1797, 1, 8, 8)
    assert task.split_sizes() == {"train": 500, "val": 200, "test": 1097}
    train = task.images[task.splits["train"]]
    assert abs(train.mean().item()) < 1e-4 and abs(train.std().item() - 1) < 1e-3


# --------------------------------------------------------------------------------- CIFAR


def _write_batch(path, data, labels, label_key, protocol=2):
    batch = {b"batch_label": b"test batch", label_key: labels.tolist(), b"data": data,
             b"filenames": [b"x.png"] * len(labels)}
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=protocol)  # the official files use protocol 2


# name → (folder, training files, test file, label key, classes)
LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels", 100),
}


def _write_cifar(root, name, train=100, test=12):
    """A small archive in the official layout; returns its folder, raw (N, 3072) pixels
    and labels (training files first)."""
    rng = np.random.default_rng(0)
    folder, train_files, test_file, key, classes = LAYOUTS[name]
    sizes = {f: train // len(train_files) for f in train_files} | {test_file: test}
    (root / folder).mkdir(parents=True)
    pixels, labels = [], []
    for file, size in sizes.items():
        data = rng.integers(0, 256, (size, 3072), dtype=np.uint8)
        y = np.arange(size) % classes
        # Official (protocol 2) and re-pickled (current protocol) copies both load.
        _write_batch(root / folder / file, data, y, key, 2 if name == "cifar10" else None)
        pixels.append(data)
        labels.append(y)
    return root / folder, np.concatenate(pixels), np.concatenate(labels)


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_round_trip(tmp_path, name, classes):
    folder, pixels, labels = _write_cifar(tmp_path, name)
    for path in (tmp_path, folder):  # the parent or the extracted folder itself
        task = load_cifar(name, path, val_size=10, seed=0)
        assert task.num_classes == classes and task.augment and task.flip
        assert task.images.shape == (112, 3, 32, 32)
        assert task.split_sizes() == {"train": 90, "val": 10, "test": 12}
        assert torch.equal(task.splits["test"], torch.arange(100, 112))
        assert torch.equal(task.labels, torch.from_numpy(labels))
        mean = torch.tensor(task.info["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(task.info["std"]).view(1, 3, 1, 1)
        restored = (task.images * std + mean) * 255
        expected = torch.from_numpy(pixels).view(-1, 3, 32, 32).float()
        assert torch.allclose(restored, expected, atol=1e-3)


def test_cifar_without_val_split_uses_test(tmp_path):
    _write_cifar(tmp_path, "cifar10")
    task = load_cifar("cifar10", tmp_path, val_size=0)
    assert torch.equal(task.splits["val"], task.splits["test"])
    assert task.split_sizes()["train"] == 100
    assert "val is the test set" in task.info["val"]
    with pytest.raises(DglkdError, match="val_size must be an int in 0..99"):
        load_cifar("cifar10", tmp_path, val_size=100)


def test_cifar_errors_name_the_file(tmp_path):
    with pytest.raises(DglkdError, match="cifar-100-python/test: file not found"):
        load_cifar("cifar100", tmp_path)
    with pytest.raises(DglkdError, match="'cifar20'.*allowed: cifar10, cifar100"):
        load_cifar("cifar20", tmp_path)
    folder, _, _ = _write_cifar(tmp_path, "cifar10")
    (folder / "data_batch_3").unlink()
    with pytest.raises(DglkdError, match="data_batch_3: file not found"):
        load_cifar("cifar10", tmp_path)
    blank = np.zeros((2, 3072), np.uint8)
    _write_batch(folder / "data_batch_3", blank, np.zeros(2), b"fine_labels")
    with pytest.raises(DglkdError, match="data_batch_3: missing key b'labels'"):
        load_cifar("cifar10", tmp_path)
    _write_batch(folder / "data_batch_3", blank[:, :1024], np.zeros(2), b"labels")
    with pytest.raises(DglkdError, match="data_batch_3: b'data' must be uint8 of shape"):
        load_cifar("cifar10", tmp_path)


class _Exploit:
    def __reduce__(self):
        return (shutil.rmtree, ("/nonexistent-dglkd-test",))


def test_cifar_pickles_cannot_run_code(tmp_path):
    folder, _, _ = _write_cifar(tmp_path, "cifar10")
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": _Exploit()}, handle)
    with pytest.raises(DglkdError, match="test_batch: not a CIFAR python batch.*shutil.rmtree"):
        load_cifar("cifar10", tmp_path)


# ------------------------------------------------------------------- augmentation, batches


def test_augment_keeps_shape_and_is_seeded():
    images = torch.randn(16, 3, 8, 8)
    first = augment_batch(images, 2, True, torch.Generator().manual_seed(0))
    again = augment_batch(images, 2, True, torch.Generator().manual_seed(0))
    other = augment_batch(images, 2, True, torch.Generator().manual_seed(1))
    assert first.shape == images.shape
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(augment_batch(images, 0, False), images)


def test_augment_outputs_are_crops_of_the_padded_image():
    images = torch.randn(32, 2, 5, 6)
    fill = [7.0, -7.0]
    out = augment_batch(images, 2, True, torch.Generator().manual_seed(0), fill=fill)
    padded = torch.stack([torch.full((9, 10), v) for v in fill]).repeat(32, 1, 1, 1)
    padded[:, :, 2:7, 2:8] = images
    flips = 0
    for i in range(32):
        windows = [padded[i, :, y: y + 5, x: x + 6] for y in range(5) for x in range(5)]
        plain = any(torch.equal(out[i], w) for w in windows)
        flipped = any(torch.equal(out[i], w.flip(-1)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 4 <= flips <= 28  # about half are flipped


def test_minibatches_cover_the_split_with_split_positions(mnist):
    # index = each image's position in its split: the memory-bank row of a training image
    split = mnist.splits["val"]
    gen = torch.Generator().manual_seed(0)
    batches = list(iterate_minibatches(mnist, "val", 300, shuffle=True, generator=gen))
    assert [len(b[2]) for b in batches] == [300, 300, 300, 100]
    index = torch.cat([b[2] for b in batches])
    assert torch.equal(index.sort().values, torch.arange(len(split)))
    assert not torch.equal(index, torch.arange(len(split)))
    images, labels, idx = batches[0]
    assert torch.equal(images, mnist.images[split[idx]])
    assert torch.equal(labels, mnist.labels[split[idx]])
    in_order = list(iterate_minibatches(mnist, "val", 300))
    assert torch.equal(torch.cat([b[2] for b in in_order]), torch.arange(len(split)))
    assert torch.equal(torch.cat([b[0] for b in in_order]), mnist.images[split])
    dropped = list(iterate_minibatches(mnist, "val", 300, drop_last=True, device="cpu"))
    assert len(dropped) == 3


def test_minibatches_augment_when_asked(mnist):
    gen = torch.Generator().manual_seed(0)
    images, _, idx = next(iterate_minibatches(mnist, "train", 64, generator=gen, augment=True))
    assert images.shape == (64, 1, 28, 28)
    assert not torch.equal(images, mnist.images[mnist.splits["train"][idx]])
    # Crops are padded with the normalised value of a black pixel, not with zeros.
    assert images.min().item() == pytest.approx(mnist.info["pad_fill"][0])
    with pytest.raises(DglkdError, match="split 'dev'.*allowed: train, val, test"):
        next(iterate_minibatches(mnist, "dev", 64))
