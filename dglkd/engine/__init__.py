"""The training engine: phases and their steps over batches of every kind (whole graph,
sampled blocks, node batches, image batches), evaluation, the teacher cache and
memory-mapped soft labels, checkpoints and resume, DDP and DistDGL, TensorBoard logs.

A regular package, so that setuptools' find_packages ships it: without this file a
non-editable ``pip install .`` left dglkd.engine out and ``dglkd distill`` failed.
Importing it imports nothing else; DGL is imported by the graph modules alone.
"""
