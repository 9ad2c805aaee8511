"""Generate a synthetic graph with ogbn-products' shape and save it with dgl.save_graphs.

2,449,029 nodes, 61,859,140 undirected edges stored both ways (123,718,280 directed),
100 features, 47 classes, products' split sizes. The file is written under a temporary
name in the target's folder and renamed into place only when complete, so a killed run
never leaves a file that looks finished. Prints sizes, seconds and peak resident memory.

    python scripts/make_products_graph.py --out /tmp/products.bin [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("DGLBACKEND", "pytorch")

import dgl  # noqa: E402
import torch  # noqa: E402

from dglkd.data.synthetic import PRODUCTS_SHAPE, synthetic_node_graph  # noqa: E402
from dglkd.errors import DglkdError  # noqa: E402


def peak_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_atomically(graph: dgl.DGLGraph, out: str, num_classes: int) -> None:
    """``dgl.save_graphs`` to a temp name beside ``out``, fsync, then rename over ``out``."""
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DglkdError(f"--out {out}: cannot create folder {folder} ({exc.strerror})") from None
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(out)}.", suffix=".tmp")
    os.close(fd)
    try:
        dgl.save_graphs(tmp, [graph], {"num_classes": torch.tensor([num_classes])})
        # The rename must not land before the bytes: flush them to disk first.
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="graph file to write (replaced atomically)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        start = time.perf_counter()
        task = synthetic_node_graph(seed=args.seed, **PRODUCTS_SHAPE)
        generated_s, generated_mib = time.perf_counter() - start, peak_mib()
        graph = task.graph
        print(f"shape: ogbn-products {PRODUCTS_SHAPE}")
        print(f"graph: {graph.num_nodes():,} nodes, {graph.num_edges():,} directed edges "
              f"({graph.num_edges() // 2:,} undirected, stored both ways), "
              f"{task.num_features} features, {task.num_classes} classes; split {task.split_sizes()}")
        print(f"generated in {generated_s:.1f} s, peak RSS {generated_mib:,.0f} MiB")
        save_atomically(graph, args.out, task.num_classes)
        print(f"saved {args.out} ({os.path.getsize(args.out) / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - start - generated_s:.1f} s; total {time.perf_counter() - start:.1f} s, "
              f"peak RSS {peak_mib():,.0f} MiB")
    except DglkdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
