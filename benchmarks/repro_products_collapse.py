"""Why the old products-shaped SAGE teacher never learned: a reproduction (issue 25).

Runs the SAGE 3x256 teacher of benchmarks/bench_products_scale.py (fan-outs [15, 10, 5],
seed batches of 1,024, Adam) on a 2%-sized instance of a products-shaped graph, with the
same average degree, logging per batch the loss, the logits' spread, the training batch's
accuracy and the share of dead hidden units (a unit whose ReLU output is zero for every
node of the batch), after layers 0 and 1.

    GEN=old python benchmarks/repro_products_collapse.py    # the generator before issue 25
    GEN=new python benchmarks/repro_products_collapse.py    # dglkd.data.synthetic's products preset

``GEN=old`` needs the old generator: ``git show c75a275:dglkd/data/synthetic.py >
/tmp/old_synthetic.py``. Further switches (environment): ``LR`` (default 0.003), ``NORM``
(``none`` or ``batch``), ``STANDARDIZE=1`` (features scaled to unit variance),
``LOOP=bare`` (no dglkd engine: DGL's DataLoader and a plain loop with a SAGE written as
DGL's GraphSAGE example writes it), ``BATCHES`` (default 40). Without ``LOOP=bare`` the
graph goes through dglkd's one graph engine (saved, then ``data: {name: graph_file}``,
``GraphBackend.batches`` and ``train_step``).

The cause, measured with this script (BATCHES=40, one thread, about 15 s a run; loss,
logit std and the share of layer 1's units dead for the whole batch at batch 40):

    GEN=old                  loss 3.85 (chance: ln 47 = 3.85), logit std 0.06, 79% dead
                             (batch 30; from loss 58.8 and logit std 20.3 at batch 1)
    GEN=old LOOP=bare        loss 3.85, logit std 0.05, 84% dead
    GEN=old STANDARDIZE=1    loss 3.85, logit std 0.05, 60% dead (feature std 1.00)
    GEN=old LR=0.0003        loss 18.9, logit std 8.6, 0% dead (still far from learning)
    GEN=old NORM=batch       loss 2.55, batch accuracy 0.33 and rising, 0% dead
    GEN=new                  loss 1.47, batch accuracy 0.63, 8% dead

The old generator's features (std 5.1, weak class signal) gave a 3-layer SAGE without
normalisation huge first logits; Adam's first steps at lr 0.003 then drove layer 1's
ReLUs dead until the network output the same logits for every node and the loss sat at
chance. DGL's own SAGE in a bare DGL loop collapses the same way, so it is not a bug in
dglkd's mini-batch path; unit-variance features alone do not prevent it; batch norm in the
teacher does, and so does the new generator's data (unit-variance features whose class
signal survives aggregation): its scale-0.1 products run trained the teacher without
normalisation to 0.759 test accuracy (dglkd.data.synthetic's docstring).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from types import SimpleNamespace

os.environ.setdefault("DGLBACKEND", "pytorch")

import dgl  # noqa: E402
import dgl.nn as dglnn  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dglkd.config import config_from_dict  # noqa: E402
from dglkd.data.synthetic import save_graph_file  # noqa: E402
from dglkd.engine.graph import GraphBackend  # noqa: E402
from dglkd.engine.optim import make_optimizer  # noqa: E402
from dglkd.engine.step import train_step  # noqa: E402
from dglkd.methods import compose  # noqa: E402

SCALE = 0.02
BATCH = 1024
FANOUTS = [15, 10, 5]


def old_task():
    spec = importlib.util.spec_from_file_location("old_synthetic", "/tmp/old_synthetic.py")
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    shape = dict(old.PRODUCTS_SHAPE)
    shape["num_nodes"] = int(shape["num_nodes"] * SCALE)
    shape["num_edges"] = int(shape["num_edges"] * SCALE)
    return old.synthetic_node_graph(seed=0, **shape)


def new_task():
    from dglkd.data.synthetic import ogb_like

    return ogb_like("ogbn-products", SCALE, seed=0)


class DGLStyleSAGE(torch.nn.Module):
    """SAGEConv(mean) ×3 with ReLU and dropout between layers, as DGL's example builds it."""

    def __init__(self, in_dim: int, classes: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([dglnn.SAGEConv(in_dim, 256, "mean"),
                                           dglnn.SAGEConv(256, 256, "mean"),
                                           dglnn.SAGEConv(256, classes, "mean")])
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, blocks, x):
        h = x
        for index, (layer, block) in enumerate(zip(self.layers, blocks)):
            h = layer(block, h)
            if index < len(self.layers) - 1:
                h = self.dropout(torch.relu(h))
        return h


def bare_epochs(backend):
    """Batches from DGL's DataLoader and a step of plain PyTorch, no dglkd engine."""
    store = backend.train
    train_ids = torch.nonzero(store.gather("train_mask")).squeeze(1)
    sampler = dgl.dataloading.NeighborSampler(FANOUTS)

    def epoch():
        loader = dgl.dataloading.DataLoader(store.graph, train_ids, sampler,
                                            batch_size=BATCH, shuffle=True)
        for _, _, blocks in loader:
            yield SimpleNamespace(inputs=(blocks, blocks[0].srcdata["feat"]),
                                  labels=blocks[-1].dstdata["label"])

    def step(batch, model, _objective, optimizer, _teacher):
        loss = F.cross_entropy(model(*batch.inputs), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"total": loss.detach()}

    return epoch, step


def backend_over(task, folder: str, lr: float, norm: str):
    """The task saved as a graph file and loaded back through dglkd's one graph engine
    (``data: {name: graph_file}``), with the teacher phase of bench_products_scale."""
    path = os.path.join(folder, "graph.bin")
    save_graph_file(task, path)
    train = {"epochs": 1, "lr": lr, "weight_decay": 0.0, "batch_size": BATCH,
             "fanouts": FANOUTS}
    config = config_from_dict({
        "name": "repro_products_collapse", "seed": 0, "n_runs": 1, "device": "cpu",
        "data": {"name": "graph_file", "path": path, "self_loop": False},
        "teacher": {"model": "sage", "hidden": 256, "layers": 3, "dropout": 0.5,
                    "norm": norm},
        "teacher_train": train, "student": {"model": "mlp"}, "train": {"epochs": 1},
        "method": {"name": "glnn"}, "log": {"progress": False, "tensorboard": False}})
    backend = GraphBackend(config, torch.device("cpu"), lambda _message: None)
    backend.load(0)
    return config, backend


def main() -> None:
    torch.set_num_threads(1)
    gen = os.environ.get("GEN", "old")
    task = old_task() if gen == "old" else new_task()
    if os.environ.get("STANDARDIZE") == "1":
        feat = task.graph.ndata["feat"]
        task.graph.ndata["feat"] = (feat - feat.mean(0)) / feat.std(0)
    lr, norm = float(os.environ.get("LR", 0.003)), os.environ.get("NORM", "none")
    bare = os.environ.get("LOOP") == "bare"
    with tempfile.TemporaryDirectory() as folder:
        config, backend = backend_over(task, folder, lr, norm)
        store = backend.train
        print(f"GEN={gen} LR={lr} NORM={norm} STANDARDIZE={os.environ.get('STANDARDIZE', '0')} "
              f"LOOP={'bare' if bare else 'engine'}: {store.num_nodes:,} nodes, "
              f"{store.graph.num_edges():,} edges, {int(store.gather('train_mask').sum()):,} "
              f"training nodes, feature std {float(store.gather('feat').std()):.2f}", flush=True)
        torch.manual_seed(0)
        classes, width = backend.num_classes, task.num_features
        model = (DGLStyleSAGE(width, classes) if bare
                 else backend.new_model(config.teacher, "teacher"))
        optimizer = make_optimizer(config.teacher_train, model.parameters())
        objective = compose(ce=1.0, context=classes)
        if bare:
            epoch, step = bare_epochs(backend)
        else:
            epoch = backend.batches(model, config.teacher_train, None,
                                    torch.Generator().manual_seed(0))
            step = train_step
        dead = {}

        def record(name):
            def hook(_module, _inputs, out):
                dead[name] = round(float((torch.relu(out).amax(0) <= 0).float().mean()), 3)
            return hook

        for index in range(len(model.layers) - 1):
            model.layers[index].register_forward_hook(record(f"layer{index}"))
        model.train()
        objective.train()
        done, total = 0, int(os.environ.get("BATCHES", 40))
        while done < total:
            for batch in epoch():
                loss = float(step(batch, model, objective, optimizer, None)["total"])
                done += 1
                if done <= 3 or done % 10 == 0:
                    with torch.no_grad():
                        logits = model(*batch.inputs)
                    acc = float((logits.argmax(1) == batch.labels).float().mean())
                    print(f"batch {done}: loss {loss:.3f}, logit std {float(logits.std()):.2f}, "
                          f"batch acc {acc:.3f}, dead units {dead}", flush=True)
                if done >= total:
                    break


if __name__ == "__main__":
    main()
