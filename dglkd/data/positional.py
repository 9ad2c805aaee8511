"""Position features: DeepWalk node embeddings concatenated to the node features.

NOSMOG (Tian et al., "Learning MLPs on Graphs: A Unified View of Effectiveness,
Robustness, and Efficiency", ICLR 2023) gives its MLP student each node's DeepWalk
embedding next to its content features, so that a graph-free model still knows where a
node sits in the graph. The embeddings are learned with DGL's own ``dgl.nn.DeepWalk``
(random walks by ``dgl.sampling.random_walk``, skip-gram with negative sampling, sparse
Adam), on the graph the training may see: the whole graph transductively, the observed
subgraph inductively. A node hidden from training (inductive test node) gets the mean of
its observed neighbours' embeddings (zero without any): the only position a model could
know for a node that arrives after training — our reading of NOSMOG's inductive setting.
As in NOSMOG the teacher does not see them (``to: student``, the default): it is trained
and distilled from the content features, which the task records as ``teacher_features``.

Embeddings are deterministic for a seed and cached on disk (``cache_dir``), keyed by the
graph's structure, the seed and every constant; the cache file is written atomically.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import random
from pathlib import Path
from typing import Any, Literal, Mapping, Optional

import pydantic
import torch
from torch import Tensor

from dglkd import deps
from dglkd.data.task import GraphTask
from dglkd.errors import DglkdError, describe_validation_error
from dglkd.files import atomic_write

# All of this module is DGL; dglkd.data imports it only for a graph dataset.
dgl = deps.dgl("DeepWalk position features (data.positional)")

CACHE_VERSION = 1


class PositionalParams(pydantic.BaseModel):
    """DeepWalk's constants (``dgl.nn.DeepWalk`` and its training loop)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    dim: int = pydantic.Field(128, ge=1, le=4096, description="embedding width")
    walk_length: int = pydantic.Field(20, ge=2, le=1000, description="nodes per random walk")
    window_size: int = pydantic.Field(5, ge=1, le=100,
                                      description="skip-gram window: context nodes each side")
    negative_size: int = pydantic.Field(5, ge=1, le=100,
                                        description="negative samples per positive pair")
    epochs: int = pydantic.Field(3, ge=1, le=1000,
                                 description="passes over the nodes (one walk started at "
                                             "every node per pass)")
    batch_size: int = pydantic.Field(32, ge=1, le=1 << 20, description="walks per step")
    lr: float = pydantic.Field(0.05, gt=0, le=10.0, description="sparse Adam learning rate")
    seed: Optional[int] = pydantic.Field(
        None, ge=0, lt=2**32,
        description="DeepWalk's seed; none: the dataset's seed (a fixed one lets the runs of "
                    "every split seed share one cached embedding)")
    # NOSMOG concatenates the skip-gram vectors as they come (row norm ~4 on cora.npz, the
    # 0/1 words' scale); standardised columns (row norm ~8) swamp the content features and
    # cost 0.3-0.6 points on cora.npz over 10 seeds (README, "GNN → MLP on cora.npz")
    standardize: bool = pydantic.Field(
        False, description="scale every embedding column to zero mean and unit variance "
                           "(over the nodes DeepWalk saw) instead of NOSMOG's raw vectors")
    concat: bool = pydantic.Field(True, description="append to ndata['feat'] (else only "
                                                    "ndata['pos'] is set)")
    to: Literal["student", "both"] = pydantic.Field(
        "student", description="who reads them: the student alone (NOSMOG: the teacher is "
                               "trained and distilled from the content features only), or "
                               "teacher and student")
    cache_dir: Optional[str] = pydantic.Field(None, description="folder of cached embeddings; "
                                                                "none: no cache")


def positional_params(options: Mapping[str, Any] | PositionalParams | None,
                      key: str = "positional") -> PositionalParams:
    if isinstance(options, PositionalParams):
        return options
    if not isinstance(options, Mapping):
        raise DglkdError(f"{key}: expected a mapping of DeepWalk constants, e.g. "
                         f"{{dim: 128}}; got {options!r}")
    try:
        return PositionalParams(**options)
    except pydantic.ValidationError as exc:
        raise DglkdError(describe_validation_error(exc, key,
                                                   list(PositionalParams.model_fields))) from None


def _fingerprint(graph: dgl.DGLGraph, params: PositionalParams, seed: int) -> str:
    """Hash of the structure, the seed and every constant that changes the embeddings."""
    src, dst = (t.cpu().contiguous() for t in graph.edges())
    digest = hashlib.sha256()
    digest.update(f"v{CACHE_VERSION}:{graph.num_nodes()}:{seed}:".encode())
    digest.update(params.model_dump_json(exclude={"cache_dir", "concat", "to"}).encode())
    digest.update(src.numpy().tobytes())
    digest.update(dst.numpy().tobytes())
    return digest.hexdigest()[:24]


def deepwalk_embeddings(graph: dgl.DGLGraph, params: PositionalParams | Mapping[str, Any]
                        | None = None, seed: int = 0) -> Tensor:
    """DeepWalk embeddings (N, dim) of ``graph``'s nodes, trained with ``dgl.nn.DeepWalk``
    on the CPU; the same for the same seed (torch's, Python's and DGL's generators are
    seeded here; torch's and Python's are restored afterwards)."""
    params = positional_params(params or {})
    cache = None
    if params.cache_dir:
        cache = Path(params.cache_dir) / f"deepwalk_{_fingerprint(graph, params, seed)}.pt"
        if cache.is_file():
            return torch.load(cache)
    graph = graph.cpu()
    if graph.num_edges() == 0:
        raise DglkdError("positional: the graph has no edges; DeepWalk needs some")
    py_state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)  # DeepWalk's fast negatives shuffle with Python's random
            dgl.seed(seed)     # the random walks
            embeddings = _train(graph, params, seed)
    finally:
        random.setstate(py_state)
    if params.standardize:
        embeddings = (embeddings - embeddings.mean(0)) / embeddings.std(0).clamp_min(1e-12)
    if cache is not None:
        _atomic_save(embeddings, cache)
    return embeddings


def _train(graph: dgl.DGLGraph, params: PositionalParams, seed: int) -> Tensor:
    # random walks stop at nodes without out-edges; DeepWalk needs full-length walks, so
    # such nodes get a self loop (a walk then stays put, as an isolated node should)
    sinks = torch.nonzero(graph.out_degrees() == 0, as_tuple=True)[0]
    if len(sinks):
        graph = dgl.add_edges(graph, sinks, sinks)
    # fast_neg=False: negatives drawn by DGL from the degree^0.75 distribution (word2vec's),
    # instead of a Python shuffle of a list the size of the batch's pairs, the slow part
    model = dgl.nn.DeepWalk(graph, emb_dim=params.dim, walk_length=params.walk_length,
                            window_size=params.window_size, negative_size=params.negative_size,
                            fast_neg=False, sparse=True)
    optimizer = torch.optim.SparseAdam(model.parameters(), lr=params.lr)
    loader = torch.utils.data.DataLoader(
        torch.arange(graph.num_nodes()), batch_size=params.batch_size, shuffle=True,
        collate_fn=model.sample, generator=torch.Generator().manual_seed(seed))
    model.train()
    for _ in range(params.epochs):
        for walks in loader:
            loss = model(walks)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.node_embed.weight.detach().clone()


def _atomic_save(tensor: Tensor, path: Path) -> None:
    buffer = io.BytesIO()  # in memory first: a full disk then raises ENOSPC, not a zip error
    torch.save(tensor, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def add_positional_features(task: GraphTask, options: Mapping[str, Any] | PositionalParams
                            | None = None, seed: int = 0) -> GraphTask:
    """The task with DeepWalk embeddings in ``ndata['pos']`` and (``concat``) appended to
    ``ndata['feat']``; with ``to: student`` the task's ``teacher_features`` keeps the
    teacher on the content columns. Inductive tasks: DeepWalk runs on the observed subgraph; hidden
    nodes get the mean of their observed neighbours' embeddings."""
    params = positional_params(options or {})
    seed = params.seed if params.seed is not None else seed
    graph = task.graph
    observed = task.observed_mask
    if observed is None:
        pos = deepwalk_embeddings(graph, params, seed)
    else:
        ids = torch.nonzero(observed.cpu(), as_tuple=True)[0]
        seen = deepwalk_embeddings(dgl.node_subgraph(graph.cpu(), ids), params, seed)
        pos = torch.zeros(graph.num_nodes(), params.dim)
        pos[ids] = seen
        pos = _fill_from_observed_neighbours(graph.cpu(), pos, observed.cpu())
    graph = graph.clone()
    pos = pos.to(graph.device)
    graph.ndata["pos"] = pos
    teacher_features = task.teacher_features
    if params.concat:
        if params.to == "student" and teacher_features is None:
            teacher_features = task.num_features
        graph.ndata["feat"] = torch.cat([graph.ndata["feat"], pos.to(graph.ndata["feat"].dtype)],
                                        dim=1)
    info = dict(task.info, positional={k: v for k, v in params.model_dump().items()
                                       if k != "cache_dir"})
    return dataclasses.replace(task, graph=graph, info=info, teacher_features=teacher_features)


def _fill_from_observed_neighbours(graph: dgl.DGLGraph, pos: Tensor, observed: Tensor) -> Tensor:
    """Hidden nodes' rows ← mean of their observed in-neighbours' rows (0 without any)."""
    src, dst = graph.edges()
    keep = observed[src] & ~observed[dst]
    src, dst = src[keep], dst[keep]
    total = torch.zeros_like(pos).index_add_(0, dst, pos[src])
    count = torch.zeros(len(pos)).index_add_(0, dst, torch.ones(len(dst)))
    filled = pos.clone()
    hidden = ~observed
    filled[hidden] = total[hidden] / count[hidden].clamp_min(1).unsqueeze(1)
    return filled


__all__ = ["PositionalParams", "add_positional_features", "deepwalk_embeddings"]
