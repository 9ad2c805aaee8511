"""TensorBoard logging for one training phase."""
from __future__ import annotations

from pathlib import Path
from typing import Any


class PhaseLog:
    """Scalars per epoch to TensorBoard (``loss/*``, ``acc/*``, ``lr``) and hparams at the
    end, all in one run (the phase's folder).

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
        """The phase's hparams and final metrics, in the phase's own run.

        ``SummaryWriter.add_hparams`` would open a second run (a sub-folder of its own) per
        call; TensorBoard's HPARAMS tab reads the same three summaries from any run, and
        the metrics from that run's scalars, so both are written by the phase's writer."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                for k, v in hparams.items()}
        named = {f"hparam/{k}": v for k, v in metrics.items()}
        for summary in hparams_summaries(flat, named):
            self.writer.file_writer.add_summary(summary)
        for tag, value in named.items():
            self.writer.add_scalar(tag, value)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
