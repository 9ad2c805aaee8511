"""Instance graphs: kNN graphs over a batch's outputs, their dense twin, graph unions.

Everything is built on the device of its inputs.
"""
from dglkd.graphs.knn import (
    METRICS,
    dense_knn_index,
    knn_instance_graph,
    mean_aggregate_dense,
)
from dglkd.graphs.union import union_graph

__all__ = [
    "METRICS",
    "dense_knn_index",
    "knn_instance_graph",
    "mean_aggregate_dense",
    "union_graph",
]
