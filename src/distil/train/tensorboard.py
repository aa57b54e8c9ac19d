"""TensorBoard event files of a training run (`--tensorboard DIR`, `TENSORBOARD_DIR`), for `tensorboard --logdir DIR`.

Written with tensorboardX (no TensorFlow needed), by rank 0 only, into DIR/<model dir name>, so the runs and the
stages of one DIR show as separate runs. Tags: `train/<term>_loss` (each weighted term), `train/loss` (their sum),
`train/learning_rate`, `train/weight_<term>` (scheduled weights' factors), `train/temperature_<term>_min`/`_max` (a
scheduled temperature's range in the batch), and `dev/<metric>` at each epoch's end; the x axis is the global step.
"""

from __future__ import annotations

from pathlib import Path


class EventLog:
    """Scalars into one run's event file; a no-op without a directory (or on ranks other than 0)."""

    def __init__(self, root: str, run_name: str, writer: bool = True):
        self.writer = None
        if root and writer:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir=str(Path(root) / run_name), flush_secs=30)

    def scalars(self, group: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{group}/{name}", float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
