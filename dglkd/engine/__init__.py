"""The training engine: phases and their steps over batches of every kind (whole graph,
sampled blocks, node batches, image batches), evaluation, the teacher cache and
memory-mapped soft labels, checkpoints and resume, DDP and DistDGL, TensorBoard logs."""
