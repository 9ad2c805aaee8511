"""A node model's outputs over a store, written once for every store: every node layer by
layer, a few nodes exactly, and how long a few nodes take.

Layer-wise inference runs one layer over every node at a time, in batches of destination
nodes with their whole one-hop neighbourhood (``MultiLayerFullNeighborSampler(1)``, as
DGL's ``SAGE.inference``), keeping only that layer's input and output rows; a graph-free
model runs all its layers per batch of rows. The result equals ``model(graph, feat)`` in
eval mode. On a store whose tables are shared (DistDGL) every process computes its share
of each layer's rows and waits for the others before the next layer.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from dglkd import deps
from dglkd.engine.knowledge import RowTable, read_rows
from dglkd.engine.step import median_ms
from dglkd.engine.stores import GraphStore, MemoryStore, all_blocks
from dglkd.errors import DglkdError
from dglkd.methods import Knowledge, capture
from dglkd.models.contract import NodeModel, node_model
from dglkd.models.tap import FeatureTap
from dglkd.progress import progress as progress_bar

dgl = deps.dgl("layer-wise inference of a node model")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode without gradients for the call, then each module's own mode back (frozen
    parts stay frozen)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training


def feature_layers(model: NodeModel, names: Sequence[str]) -> dict[str, int]:
    """Each requested name (but ``logits``) → the index of the layer whose output it is."""
    index = {f"layers.{i}": i for i in range(len(model.layers))}
    aliases = model.feature_aliases
    found = {}
    for name in dict.fromkeys(names):
        if name == "logits":
            continue
        path = aliases.get(name, name)
        if path not in index:
            known = ["logits", *aliases, *index]
            raise DglkdError(f"feature {name!r} is not a layer output; layer-wise inference "
                             f"can capture: {', '.join(known)}")
        found[name] = index[path]
    return found


def _stages(model: NodeModel) -> list[list[int]]:
    """The layers run per pass over the nodes: one per pass for a GNN (its next layer needs
    every neighbour's row), all at once for a graph-free model (rows are independent)."""
    count = len(model.layers)
    return [[i] for i in range(count)] if model.uses_graph else [list(range(count))]


def layerwise(model: NodeModel, store: GraphStore, batch_size: int,
              names: Sequence[str] = (), *, shared: bool = False,
              progress: bool = False) -> dict[str, RowTable]:
    """Every node's ``logits`` and the named hidden features (each a layer output, as
    ``FeatureTap`` records it, one flattened row per node), as row tables: CPU tensors,
    or with ``shared`` the store's shared tables, each process computing the rows of its
    ``own_nodes`` (local writes: see DistStore.own_nodes)."""
    layer_of = feature_layers(model, names)
    tables: dict[str, RowTable] = {}
    nodes = store.own_nodes() if shared else torch.arange(store.num_nodes)
    stages = _stages(model)
    source: RowTable = None

    def write(name: str, ids: Tensor, value: Tensor) -> None:
        if name not in tables:
            width = value.shape[1]
            tables[name] = (store.new_rows(name, width) if shared
                            else torch.empty(store.num_nodes, width))
        tables[name][ids.cpu()] = value.cpu()

    with eval_mode(model), FeatureTap(model, list(layer_of)) as tap:
        for number, stage in enumerate(stages):
            out_name = "logits" if number == len(stages) - 1 else f"layer{stage[-1]}"
            batches = store.loader(nodes, [-1] if model.uses_graph else None, batch_size,
                                   per_rank=False, features=False,
                                   degrees=model.source_degree_norm)
            desc = f"inference layer {number + 1}/{len(stages)}"
            for batch in progress_bar(batches, progress, desc):
                h = (store.gather("feat", batch.input_nodes) if number == 0
                     else read_rows(source, batch.input_nodes).to(store.device))
                block = batch.blocks[0] if batch.blocks else None
                for layer in stage:
                    if layer == 0:
                        h = model.prepare_input(h)
                    h = model.finish_layer(layer, model.apply_layer(layer, block, h))
                for name, value in tap.pop().items():
                    write(name, batch.output_nodes, value.flatten(1))
                write(out_name, batch.output_nodes, h)
            if shared:  # every process's rows are in before the next layer reads them
                store.barrier()
            source = tables[out_name]
    return {"logits": tables["logits"], **{name: tables[name] for name in layer_of}}


def exact_knowledge(model: NodeModel, store: GraphStore, ids: Tensor,
                    names: Sequence[str] = ()) -> Knowledge:
    """What ``model`` (eval mode) knows about nodes ``ids`` from their whole neighbourhoods
    (full blocks), in the order of ``ids``: the rows a full-graph pass gives them."""
    fanouts = all_blocks(model.num_hops) if model.uses_graph else None
    with eval_mode(model):
        (batch,) = store.loader(ids, fanouts, len(ids), per_rank=False,
                                degrees=model.source_degree_norm)
        # A hidden layer's output on blocks has rows for the next block's input nodes,
        # the batch's own (the destination nodes) first.
        knowledge = capture(model, names, batch.blocks, batch.feat).rows(slice(0, len(ids)))
    served, wanted = batch.output_nodes.cpu(), ids.cpu()
    if torch.equal(served, wanted):
        return knowledge
    order = torch.argsort(served)
    return knowledge.rows(order[torch.searchsorted(served[order], wanted)]
                          .to(knowledge.logits.device))


def exact_logits(model: NodeModel, store: GraphStore, ids: Tensor) -> Tensor:
    """``model``'s eval-mode logits of nodes ``ids`` from their whole neighbourhoods."""
    return exact_knowledge(model, store, ids).logits


def latency_ms(model: NodeModel, store: GraphStore, targets: Tensor,
               repeats: int = 7) -> float:
    """Median time to predict ``targets``: a GNN gathers its multi-hop neighbourhood
    first, a graph-free model reads the targets' features only."""
    return median_ms(lambda: exact_logits(model, store, targets), store.device, repeats)


def layerwise_inference(model: nn.Module, graph: Any, feat: Tensor, batch_size: int,
                        names: Sequence[str] = (), progress: bool = False
                        ) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`layerwise` for a ``DGLGraph`` in memory (``None`` for a graph-free model) and
    its features ``feat``, on the model's device: ``(logits, {name: feature})``, every row
    in node order."""
    model = node_model(model, "model")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DglkdError(f"batch_size: must be a positive integer (got {batch_size!r})")
    if graph is None:
        if model.uses_graph:
            raise DglkdError(f"graph: {type(model).__name__} needs a graph, got None")
        graph = dgl.graph(([], []), num_nodes=len(feat))
    if graph.is_block or graph.num_nodes() != len(feat):
        raise DglkdError(f"graph: layer-wise inference needs the whole graph of the "
                         f"{len(feat)} feature rows")
    device = next(model.parameters()).device
    view = graph.local_var()
    view.ndata["feat"] = feat
    tables = layerwise(model, MemoryStore(view, device), batch_size, names, progress=progress)
    logits = tables.pop("logits")
    return logits, tables


__all__ = ["eval_mode", "exact_knowledge", "exact_logits", "feature_layers", "latency_ms", "layerwise",
           "layerwise_inference"]
