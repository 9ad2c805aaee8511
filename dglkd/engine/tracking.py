"""TensorBoard logging for one training phase."""
from __future__ import annotations

from pathlib import Path
from typing import Any


class PhaseLog:
    """Scalars per epoch to TensorBoard (``loss/*``, ``acc/*``, ``lr``) and hparams at the end.

    ``start_epoch`` > 0 (a resumed phase) purges events a killed run logged past its last
    checkpoint, so curves have no duplicated steps.
    """

    def __init__(self, log_dir: Path | None, start_epoch: int = 0) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir), purge_step=start_epoch or None)

    def epoch(self, epoch: int, losses: dict[str, float], metrics: dict[str, float],
              lr: float) -> None:
        if self.writer is None:
            return
        for name, value in losses.items():  # "weight/x" stays itself, terms go under loss/
            self.writer.add_scalar(name if "/" in name else f"loss/{name}", value, epoch)
        for name, value in metrics.items():
            self.writer.add_scalar(f"acc/{name.removesuffix('_acc')}", value, epoch)
        self.writer.add_scalar("lr", lr, epoch)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.writer is None:
            return
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in hparams.items()}
        self.writer.add_hparams(flat, {f"hparam/{k}": v for k, v in metrics.items()},
                                run_name="hparams")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
