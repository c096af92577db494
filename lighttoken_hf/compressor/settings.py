"""Settings of a compression that the command line needs without importing torch (its ``--help`` starts fast)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SENSITIVITY_METRICS", "StageSchedule"]

#: Values of ``CompressionSettings.sensitivity_metric``: ``"auto"`` picks ``"lm"`` for causal LMs.
SENSITIVITY_METRICS = ("auto", "lm", "hidden_states")


@dataclass
class StageSchedule:
    """Training schedule of one hashing stage (defaults chosen by measurement, see docs/method.md).

    ``rows_per_epoch`` caps the rows an epoch of encoder training visits (a fresh random subset each
    epoch; ``None``: every row), so that training costs the same at any vocabulary size; the codes of
    every row are then set, refined and decoded from all rows (docs/method.md, "Scale").
    """

    max_epochs: int = 12
    rows_per_epoch: int | None = 65536
    batch_size: int = 4096
    lr: float = 3e-3
    tau_start: float = 1.0
    tau_decay: float = 0.75
    saturation_level: float = 0.98
    stop_saturation: float = 0.9
    decoder_steps: int = 10
    refine_sweeps: int = 2
    ridge: float = 1e-3

    def __post_init__(self) -> None:
        if self.max_epochs < 1 or self.batch_size < 1:
            raise ValueError("max_epochs and batch_size must be >= 1")
        if self.rows_per_epoch is not None and self.rows_per_epoch < 1:
            raise ValueError(f"rows_per_epoch must be >= 1 or None (every row), got {self.rows_per_epoch}")
        if not 0 < self.tau_decay <= 1 or self.tau_start <= 0:
            raise ValueError("need tau_start > 0 and 0 < tau_decay <= 1")
        if not 0 < self.stop_saturation <= 1 or not 0 < self.saturation_level < 1:
            raise ValueError("stop_saturation must be in (0, 1] and saturation_level in (0, 1)")
