"""Instance graphs: kNN graphs over a batch's outputs, their dense twin, graph unions.

Everything is built on the device of its inputs. The index and edge-list functions need
torch alone; the DGLGraph builders import DGL when called (:mod:`dglkd.deps`).
"""
from dglkd.graphs.knn import (
    METRICS,
    dense_knn_index,
    knn_instance_graph,
    mean_aggregate_dense,
)
from dglkd.graphs.union import union_edges, union_graph

__all__ = [
    "METRICS",
    "dense_knn_index",
    "knn_instance_graph",
    "mean_aggregate_dense",
    "union_edges",
    "union_graph",
]
