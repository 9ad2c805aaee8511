"""Datasets brought into two shapes: GraphTask (node classification) and ImageTask."""
from dglkd.data.task import GraphTask, ImageTask, accuracy

__all__ = ["GraphTask", "ImageTask", "accuracy"]
