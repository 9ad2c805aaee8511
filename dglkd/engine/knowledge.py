"""The frozen teacher's knowledge of every training node, one type wherever it is held."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dglkd.methods import Knowledge

# A per-node table: anything indexable by node ids for reading and writing (a tensor, the
# tensor view of a memory-mapped soft-label file, a DistTensor).
RowTable = Any

# Rows read at a time when a whole table is read (memory-mapped files, DistTensors).
CHUNK = 1 << 18


def _chunks(count: int) -> list[Tensor]:
    return [torch.arange(start, min(start + CHUNK, count)) for start in range(0, count, CHUNK)]


def read_rows(table: RowTable, ids: Tensor | None) -> Tensor:
    """Rows ``ids`` of a table (all when None) as float32; a tensor is indexed where it
    lives, a file's view or a ``DistTensor`` with CPU ids, chunk by chunk when whole."""
    if isinstance(table, Tensor) and table.dtype == torch.float32 and ids is None:
        return table
    if ids is None:
        return torch.cat([read_rows(table, chunk) for chunk in _chunks(len(table))])
    where = table.device if isinstance(table, Tensor) else "cpu"
    return table[ids.to(where)].float()


@dataclass
class TeacherKnowledge:
    """The teacher's logits and the hidden features a recipe reads, of every node of the
    training graph, as row tables: tensors in memory (a full-batch run), the teacher
    cache's memory-mapped soft-label files (a mini-batch run), ``DistTensor`` s (DistDGL).
    Every batch kind reads its instances' rows with :meth:`rows`, as a
    :class:`~dglkd.methods.Knowledge` on the device; image batches have none (the frozen
    teacher runs on each batch's random crop)."""

    logits: RowTable
    feats: dict[str, RowTable] = field(default_factory=dict)
    device: torch.device = torch.device("cpu")

    @classmethod
    def in_memory(cls, knowledge: Knowledge) -> "TeacherKnowledge":
        return cls(knowledge.logits, dict(knowledge.feats), knowledge.logits.device)

    def rows(self, ids: Tensor | None = None) -> Knowledge:
        """The knowledge of nodes ``ids`` (every node when None) as float32 on the device."""
        return Knowledge(read_rows(self.logits, ids).to(self.device),
                         {name: read_rows(table, ids).to(self.device)
                          for name, table in self.feats.items()})

    def all_logits(self) -> Tensor:
        """Every node's logits as float32 (on the CPU for stored tables)."""
        return read_rows(self.logits, None)

    def predictions(self) -> Tensor:
        """The teacher's predicted class of every node."""
        if isinstance(self.logits, Tensor) and self.logits.dtype == torch.float32:
            return self.logits.argmax(-1)
        return torch.cat([read_rows(self.logits, chunk).argmax(-1)
                          for chunk in _chunks(len(self.logits))])

    def with_logits(self, logits: Tensor) -> "TeacherKnowledge":
        """The same hidden features with ``logits`` (every node's) in place of the teacher's."""
        return dataclasses.replace(self, logits=logits)


__all__ = ["RowTable", "TeacherKnowledge", "read_rows"]
