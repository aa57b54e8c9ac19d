"""Training settings shared by every algorithm (kept free of OneFlow so the CLI can build flags from it)."""

from __future__ import annotations

import dataclasses

from distil.data.buckets import check_mode
from distil.errors import UsageError

# The original's flag spellings, accepted next to ours.
ALIASES = {
    "epochs": ("--num_epochs",),
    "weight_decay": ("--weight_decay_rate",),
    "batch_size": ("--batch_size_per_device",),
    "eval_batch_size": ("--eval_batch_size_per_device",),
    "log_every": ("--loss_print_every_n_iter",),
}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; the original's flags keep their names (`learning_rate`, `weight_decay` …)."""

    epochs: int = 3
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_proportion: float = 0.1
    batch_size: int = 32
    eval_batch_size: int = 32
    seed: int = 42
    log_every: int = 20
    max_steps: int = 0  # > 0: stop after this many steps (smoke runs); 0: all epochs
    checkpoint_every: int = 0  # > 0: also save train_state/ every N steps (always at epoch ends)
    checkpoint_minutes: float = 10.0  # > 0: also save it at a logging step once this many minutes have passed
    clip_grad: float = 1.0
    select_best: bool = True  # False: keep the last epoch (a stage whose dev metric means nothing yet)
    shuffle: bool = True  # False: training records in file order (each rank: its shard in order)
    use_fp16: bool = False  # mixed precision (nn.Graph AMP, dynamic loss scaling); CUDA only
    teacher_cache: str = "auto"  # auto: the teacher's per-example outputs computed once (train/teacher_cache.py);
    # onnxruntime: the same, its pass on onnxruntime (one CPU process); off
    micro_batch_size: int = 0  # rows per forward/backward pass inside a step; 0: auto (micro_batch_count)
    length_buckets: str = "auto"  # auto: batches of similar length, cut to their bucket (data/buckets.py); off
    tensorboard: str = ""  # a folder: TensorBoard event files of every loss term, the LR, dev metrics

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or not 0 <= self.warmup_proportion < 1 or self.weight_decay < 0:
            raise UsageError("--learning_rate must be > 0, --warmup_proportion in [0, 1), --weight_decay >= 0")
        if self.checkpoint_every < 0 or self.checkpoint_minutes < 0:
            raise UsageError(
                f"--checkpoint_every and --checkpoint_minutes must be >= 0, got {self.checkpoint_every} "
                f"and {self.checkpoint_minutes}"
            )
        if self.micro_batch_size < 0 or (self.micro_batch_size and self.batch_size % self.micro_batch_size):
            raise UsageError(
                f"--micro_batch_size must divide --batch_size ({self.batch_size}), got {self.micro_batch_size}"
            )
        check_mode(self.length_buckets)
        if self.teacher_cache not in CACHE_MODES:
            raise UsageError(f"--teacher_cache must be one of {', '.join(CACHE_MODES)}, got '{self.teacher_cache}'")


CACHE_MODES = ("auto", "onnxruntime", "off")
MICRO_BATCH_TOKENS = 1024  # auto micro-batches hold at most this many tokens (8 rows of 128)


def micro_batch_count(settings: TrainSettings, seq_length: int) -> int:
    """How many micro-batches one training step of `settings.batch_size` rows is cut into, for rows of
    `seq_length` positions (with length buckets: the sum of the buckets' lengths, one graph each).

    OneFlow 0.9's CPU nn.Graph holds every buffer of a step at once, so its memory grows with the rows
    of one pass (a 4L-312 step at 32 x 128: 5.3 GB; as 4 x 8 rows: 2.0 GB, equally fast). The graph
    accumulates the micro-batches' gradients (nn.Graph gradient accumulation) and updates once: the same
    step as one pass. Auto: the largest divisor of the batch size with at most MICRO_BATCH_TOKENS tokens.
    """
    if settings.micro_batch_size:
        return settings.batch_size // settings.micro_batch_size
    rows = max(1, MICRO_BATCH_TOKENS // max(1, seq_length))
    micro = max(d for d in range(1, settings.batch_size + 1) if settings.batch_size % d == 0 and d <= rows)
    return settings.batch_size // micro
