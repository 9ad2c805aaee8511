"""Image datasets as :class:`~dglkd.data.task.ImageTask`, augmentation and minibatches.

* ``load_mnist``: the real MNIST test set (bundled, 10,000 images) or a user's idx files;
* ``load_cifar``: CIFAR-10 / CIFAR-100 from the python pickles of the official archives;
* ``load_digits``: scikit-learn's bundled 8×8 digits (1,797 images).

Images are held in memory, normalised, as float (N, C, H, W); iterating over them with
:func:`iterate_minibatches` is faster than a DataLoader for sets this size and yields every
sample's position in its split (the row a memory bank keeps for a training image).
"""
from __future__ import annotations

import gzip
import os
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from dglkd.data.task import ImageTask
from dglkd.errors import DglkdError

BUNDLED_MNIST = Path(__file__).parent / "bundled" / "mnist"
# (images, labels) file stems, in order of preference, and the idx magic numbers
MNIST_FILES = (
    ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
)
IDX_IMAGES, IDX_LABELS = 2051, 2049
# Statistics of the MNIST training set, the usual normalisation.
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


@dataclass(frozen=True)
class CifarLayout:
    """Where an official CIFAR python archive keeps its batches, and how to normalise them."""

    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    url: str


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": CifarLayout(
        "cifar-100-python",
        ("train",),
        ("test",),
        b"fine_labels",
        100,
        (0.5071, 0.4867, 0.4408),  # the statistics the CRD benchmark normalises with
        (0.2675, 0.2565, 0.2761),
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}


# ----------------------------------------------------------------------------- splits


def stratified_order(labels: Tensor, seed: int) -> Tensor:
    """A seeded random order of all indices in which every prefix holds each class in
    about its overall share (within one sample), so ``order[:n]`` is a stratified sample.
    """
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(int(seed)))
    shuffled = labels[perm]
    counts = torch.bincount(shuffled)
    by_class = torch.argsort(shuffled, stable=True)
    first_of_class = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(shuffled)
    rank[by_class] = torch.arange(len(labels)) - first_of_class[shuffled[by_class]]
    # How far through its own class each sample comes; sorting on it interleaves classes.
    progress = (rank + 0.5) / counts[shuffled]
    return perm[torch.argsort(progress, stable=True)]


def seeded_splits(
    dataset: str, labels: Tensor, train_size: int, val_size: int, seed: int
) -> dict[str, Tensor]:
    """Stratified random train / val split of ``train_size`` / ``val_size``; the rest is test."""
    n = len(labels)
    if not isinstance(train_size, int) or train_size < 1:
        raise DglkdError(f"{dataset}: train_size must be a positive int, got {train_size!r}")
    if not isinstance(val_size, int) or val_size < 0:
        raise DglkdError(f"{dataset}: val_size must be an int ≥ 0, got {val_size!r}")
    if train_size + val_size >= n:
        raise DglkdError(
            f"{dataset}: train_size + val_size = {train_size + val_size} must be below the "
            f"{n} images (the rest is the test set)"
        )
    order = stratified_order(labels, seed)
    cut = train_size + val_size
    parts = {"train": order[:train_size], "val": order[train_size:cut], "test": order[cut:]}
    return {name: idx.sort().values for name, idx in parts.items()}


# ------------------------------------------------------------------------ normalisation


def normalise(
    pixels: Tensor, max_value: float, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """Float32 ``(pixels / max_value - mean) / std`` per channel of (N, C, H, W) pixels."""
    shape = (1, -1, 1, 1)
    images = pixels.to(torch.float32)
    if images.data_ptr() == pixels.data_ptr():
        images = images.clone()  # never change the caller's tensor in place
    images.div_(max_value)
    images.sub_(torch.tensor(mean, device=images.device).view(shape))
    images.div_(torch.tensor(std, device=images.device).view(shape))
    return images


def normalisation_info(mean: Sequence[float], std: Sequence[float]) -> dict[str, list[float]]:
    """What ``info`` records: the statistics, and the normalised value of a black pixel
    (:func:`iterate_minibatches` pads crops with it, as padding raw images with zeros does)."""
    return {
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "pad_fill": [-float(m) / float(s) for m, s in zip(mean, std)],
    }


# -------------------------------------------------------------------------------- MNIST


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An idx (LeCun) file of unsigned bytes, gzipped or not, as an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DglkdError(f"{path}: cannot read the idx file ({exc})") from None
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        raise DglkdError(f"{path}: not an idx file of the expected kind (magic number {magic})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=min(header, len(raw)))
    if len(raw) < header or data.size != int(np.prod(dims)):
        raise DglkdError(f"{path}: truncated idx file (header says shape {dims})")
    return data.reshape(dims)


def find_mnist_files(folder: Path) -> tuple[Path, Path]:
    """The (images, labels) idx files in ``folder``: the t10k pair, else the train pair."""
    if not folder.is_dir():
        raise DglkdError(f"MNIST folder {folder}: no such folder")
    for images_stem, labels_stem in MNIST_FILES:
        images = _existing(folder, images_stem)
        if images is None:
            continue
        labels = _existing(folder, labels_stem)
        if labels is None:
            missing = folder / (labels_stem + ".gz")
            raise DglkdError(f"{missing}: file not found (next to {images.name})")
        return images, labels
    raise DglkdError(
        f"MNIST folder {folder}: has neither {MNIST_FILES[0][0]}[.gz] "
        f"nor {MNIST_FILES[1][0]}[.gz]; "
        "put the idx files from http://yann.lecun.com/exdb/mnist/ there"
    )


def _existing(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist(
    root: str | os.PathLike | None = None,
    train_size: int = 1000,
    val_size: int = 1000,
    seed: int = 0,
) -> ImageTask:
    """MNIST as a 1×28×28 task, split by a seeded stratified draw into ``train_size`` /
    ``val_size`` / the rest as test.

    With ``root=None`` the bundled MNIST test set (10,000 real images) is used; otherwise
    ``root`` is a folder holding ``t10k-{images-idx3,labels-idx1}-ubyte[.gz]`` (preferred)
    or the ``train-*`` pair. Images are normalised with MNIST's mean and std.
    """
    folder = BUNDLED_MNIST if root is None else Path(root).expanduser()
    images_path, labels_path = find_mnist_files(folder)
    pixels = read_idx(images_path, IDX_IMAGES)
    labels = read_idx(labels_path, IDX_LABELS)
    if pixels.ndim != 3 or len(pixels) != len(labels):
        raise DglkdError(
            f"{labels_path}: {len(labels)} labels for images of shape {pixels.shape} "
            f"in {images_path.name}"
        )
    if labels.size and labels.max() > 9:
        raise DglkdError(f"{labels_path}: labels must lie in 0..9, found {int(labels.max())}")
    label_tensor = torch.from_numpy(labels.astype(np.int64))
    images = normalise(torch.from_numpy(pixels.copy()).unsqueeze(1), 255.0, MNIST_MEAN, MNIST_STD)
    splits = seeded_splits("mnist", label_tensor, train_size, val_size, seed)
    info = {"source": str(images_path), "seed": seed, **normalisation_info(MNIST_MEAN, MNIST_STD)}
    # Flipped digits are other digits; small shifts are the only safe augmentation.
    return ImageTask("mnist", images, label_tensor, 10, splits, augment=False, flip=False,
                     crop_padding=2, info=info)


# ------------------------------------------------------------------------------- digits


def load_digits(train_size: int = 1000, val_size: int = 300, seed: int = 0) -> ImageTask:
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes) as a 1×8×8 task.

    Seeded stratified split into ``train_size`` / ``val_size`` / the rest as test;
    normalised with the mean and std of the training pixels.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    pixels = torch.as_tensor(data.images, dtype=torch.float32).unsqueeze(1)
    labels = torch.as_tensor(data.target, dtype=torch.long)
    splits = seeded_splits("digits", labels, train_size, val_size, seed)
    train_pixels = pixels[splits["train"]] / 16.0  # digits pixels range over 0..16
    mean, std = (train_pixels.mean().item(),), (train_pixels.std().item(),)
    images = normalise(pixels, 16.0, mean, std)
    info = {"source": "sklearn.datasets.load_digits", "seed": seed, **normalisation_info(mean, std)}
    return ImageTask("digits", images, labels, 10, splits, augment=False, flip=False,
                     crop_padding=1, info=info)


# -------------------------------------------------------------------------------- CIFAR


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file must not run code."""

    ALLOWED = {
        (module, name)
        for prefix in ("numpy.core", "numpy._core")
        for module, name in (
            (f"{prefix}.multiarray", "_reconstruct"),
            (f"{prefix}.multiarray", "scalar"),
            (f"{prefix}.numeric", "_frombuffer"),
        )
    } | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # bytes in protocol 2

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refers to {module}.{name}; only numpy arrays are allowed"
            )
        return super().find_class(module, name)


def read_cifar_file(path: Path, layout: CifarLayout) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch: uint8 images (n, 3, 32, 32) and int64 labels (n,)."""
    try:
        with open(path, "rb") as handle:
            batch = _ArrayUnpickler(handle, encoding="bytes").load()
    except FileNotFoundError:
        raise DglkdError(f"{path}: file not found (download {layout.url} and extract it)") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError) as exc:
        raise DglkdError(f"{path}: not a CIFAR python batch ({exc})") from None
    if not isinstance(batch, dict):
        raise DglkdError(f"{path}: not a CIFAR python batch (a {type(batch).__name__}, not a dict)")
    data = np.asarray(_batch_entry(batch, b"data", path))
    labels = np.asarray(_batch_entry(batch, layout.label_key, path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DglkdError(
            f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise DglkdError(
            f"{path}: {layout.label_key!r} must hold {len(data)} integer labels, "
            f"got shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= layout.num_classes):
        raise DglkdError(f"{path}: {layout.label_key!r} must lie in 0..{layout.num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _batch_entry(batch: dict, key: bytes, path: Path) -> object:
    # The official files are Python 2 pickles (bytes keys); re-pickled copies may use str.
    for candidate in (key, key.decode()):
        if candidate in batch:
            return batch[candidate]
    raise DglkdError(f"{path}: missing key {key!r}; found {sorted(map(str, batch))}")


def find_cifar_folder(name: str, layout: CifarLayout, path: str | os.PathLike) -> Path:
    """``path`` itself if it holds the batches, else ``path/<archive folder>``."""
    root = Path(path).expanduser()
    for folder in (root, root / layout.folder):
        if (folder / layout.test_files[0]).is_file():
            return folder
    raise DglkdError(
        f"{name}: {root / layout.folder / layout.test_files[0]}: file not found; "
        f"download {layout.url} and extract it into {root}"
    )


def load_cifar(
    name: str, path: str | os.PathLike, val_size: int = 5000, seed: int = 0
) -> ImageTask:
    """CIFAR-10 or CIFAR-100 (``name``) from the official python archive, extracted at
    ``path`` (the ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent).

    A seeded stratified draw of ``val_size`` training images is the validation split;
    with ``val_size=0`` there is none and ``val`` is the test set (``info["val"]`` says
    so). Normalised with the dataset's per-channel mean and std; ``augment=True`` asks for
    the usual random crop (padding 4) and horizontal flip.
    """
    layout = CIFAR_LAYOUTS.get(str(name).lower())
    if layout is None:
        raise DglkdError(f"dataset {name!r}: not a CIFAR set; allowed: {', '.join(CIFAR_LAYOUTS)}")
    folder = find_cifar_folder(name, layout, path)
    train = [read_cifar_file(folder / f, layout) for f in layout.train_files]
    test = [read_cifar_file(folder / f, layout) for f in layout.test_files]
    pixels = np.concatenate([d for d, _ in train + test])
    labels = torch.from_numpy(np.concatenate([y for _, y in train + test]))
    n_train = sum(len(y) for _, y in train)
    splits = cifar_splits(name, labels[:n_train], len(labels), val_size, seed)
    images = normalise(torch.from_numpy(pixels), 255.0, layout.mean, layout.std)
    info = {"source": str(folder), "seed": seed, **normalisation_info(layout.mean, layout.std)}
    if val_size == 0:
        info["val"] = "val_size=0: no validation split; val is the test set"
    return ImageTask(name.lower(), images, labels, layout.num_classes, splits, augment=True,
                     flip=True, crop_padding=4, info=info)


def cifar_splits(
    name: str, train_labels: Tensor, total: int, val_size: int, seed: int
) -> dict[str, Tensor]:
    """Train / val from the training file (stratified, seeded), test from the test file."""
    n_train = len(train_labels)
    if not isinstance(val_size, int) or not 0 <= val_size < n_train:
        raise DglkdError(
            f"{name}: val_size must be an int in 0..{n_train - 1} (the training images), "
            f"got {val_size!r}"
        )
    order = stratified_order(train_labels, seed)
    test = torch.arange(n_train, total)
    val = order[:val_size].sort().values if val_size else test
    return {"train": order[val_size:].sort().values, "val": val, "test": test}


# ------------------------------------------------------------------ augmentation, batches


def augment_batch(
    images: Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator | None = None,
    fill: float | Sequence[float] = 0.0,
) -> Tensor:
    """Random crops of the (B, C, H, W) ``images`` padded by ``padding`` on every side with
    ``fill`` (a value, or one per channel), then (if ``flip``) a horizontal flip of a random
    half; one gather for the whole batch, on the images' device. Seeded by ``generator``.
    """
    if not isinstance(padding, int) or padding < 0:
        raise DglkdError(f"crop padding must be an int ≥ 0, got {padding!r}")
    b, c, h, w = images.shape
    device = images.device
    draw_on = generator.device if generator is not None else torch.device("cpu")
    shifts = torch.randint(0, 2 * padding + 1, (2, b, 1), generator=generator, device=draw_on)
    flipped = torch.rand(b, 1, generator=generator, device=draw_on) < (0.5 if flip else 0.0)
    shifts, flipped = shifts.to(device), flipped.to(device)
    rows = shifts[0] + torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    # Flipping the crop reads its columns right to left.
    cols = torch.where(flipped, cols.flip(0), cols) + shifts[1]
    padded = pad_images(images, padding, fill)
    batch = torch.arange(b, device=device)[:, None, None]
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def pad_images(images: Tensor, padding: int, fill: float | Sequence[float]) -> Tensor:
    """``images`` with a border of ``padding`` pixels of value ``fill`` (per channel or one)."""
    b, c, h, w = images.shape
    value = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    if value.shape[1] not in (1, c):
        raise DglkdError(
            f"pad fill must be one value or {c} (one per channel), got {value.shape[1]}"
        )
    padded = value.expand(b, c, h + 2 * padding, w + 2 * padding).clone()
    padded[:, :, padding: padding + h, padding: padding + w] = images
    return padded


def iterate_minibatches(
    task: ImageTask,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: bool | None = None,
    device: torch.device | str | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Minibatches ``(images, labels, index)`` of one split, ``index`` being each image's
    position in the split: for the training split, exactly the row a memory bank keeps
    for it (``dglkd.context_for(..., labels=task.labels[task.splits["train"]])``). The
    image itself is ``task.images[task.splits[split][index]]``.

    ``shuffle`` and augmentation draw from ``generator``; ``augment=None`` follows
    ``task.augment`` (crops padded with ``task.info["pad_fill"]``, flips if ``task.flip``).
    Batches move to ``device`` (default: where the task's images are) before augmenting.
    ``drop_last`` drops a last short batch (BatchNorm cannot train on one image).
    """
    if split not in task.splits:
        raise DglkdError(
            f"split {split!r}: not in dataset {task.name!r}; allowed: {', '.join(task.splits)}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DglkdError(f"batch_size must be a positive int, got {batch_size!r}")
    split_index = task.splits[split]
    positions = torch.arange(len(split_index), device=split_index.device)
    if shuffle:
        draw_on = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(len(split_index), generator=generator, device=draw_on)
        positions = perm.to(split_index.device)
    augment = task.augment if augment is None else augment
    device = task.images.device if device is None else torch.device(device)
    stop = len(positions) - (len(positions) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        chunk = positions[start: start + batch_size]
        idx = split_index[chunk].to(task.images.device)
        images = task.images[idx].to(device, non_blocking=True)
        labels = task.labels[idx].to(device, non_blocking=True)
        if augment:
            images = augment_batch(images, task.crop_padding, task.flip, generator,
                                   task.info.get("pad_fill", 0.0))
        yield images, labels, chunk.to(device)


__all__ = [
    "augment_batch",
    "iterate_minibatches",
    "load_cifar",
    "load_digits",
    "load_mnist",
    "stratified_order",
]
