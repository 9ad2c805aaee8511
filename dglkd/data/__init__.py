"""Datasets brought into two shapes: GraphTask (node classification) and ImageTask.

``dglkd.data.load("cora")`` (or citeseer, npz, ogbn-*, mnist, digits, cifar10/100, a
graph file, a synthetic graph) returns the task the engine itself trains on.
"""
from dglkd.data.catalog import dataset_names, load
from dglkd.data.task import GraphTask, ImageTask, accuracy

__all__ = ["GraphTask", "ImageTask", "accuracy", "dataset_names", "load"]
