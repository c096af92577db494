"""Every setting of a compression, each default defined once (importable without torch: the command
line's ``--help`` reads its defaults from here and starts fast).

:class:`CompressionSettings` is what :func:`lighttoken_hf.compress` takes, as torchao's
``quantize_(model, config)`` and peft's ``get_peft_model(model, LoraConfig)`` do; its
:class:`StageSchedule` is the training schedule of each hashing stage.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DECODER_DTYPES",
    "FACTOR_DTYPES",
    "LOSS_NAMES",
    "OUTPUT_LAYERS",
    "SENSITIVITY_METRICS",
    "CompressionSettings",
    "StageSchedule",
]

#: Values of ``CompressionSettings.sensitivity_metric``: ``"auto"`` picks ``"lm"`` for causal LMs.
SENSITIVITY_METRICS = ("auto", "lm", "hidden_states")
#: Names of the reconstruction losses (:mod:`~lighttoken_hf.compressor.losses` implements each).
LOSS_NAMES = ("mse", "cosine_bound", "cosine")
#: Storage dtypes the low-rank factors, decoder biases and scales can have.
FACTOR_DTYPES = ("float16", "bfloat16", "float32", "float64")
#: Storage dtypes of the decoder weights.
DECODER_DTYPES = ("int8", *FACTOR_DTYPES)
#: Values of ``CompressionSettings.output_layer``.
OUTPUT_LAYERS = ("compress", "dense")


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


@dataclass
class CompressionSettings:
    """Every choice :func:`compress` makes; defaults chosen by measurement (docs/method.md).

    Attributes:
        ratio: target compression ratio (fp32 bytes / stored bytes); the real ratio is at least this.
        budget_bytes: a byte budget instead of ``ratio``.
        svd_rank: rank of the low-rank part (``None``: planner default).
        num_stages: hashing stages covering all rows (``None``: planner; 0: SVD-only ablation).
        stage_bits: bits per stage (``None``: planner).
        max_stage_bits: widest stage the planner builds.
        loss: ``"mse"`` (default, see docs/method.md), ``"cosine_bound"`` (the paper's) or ``"cosine"``.
        angle_weight: extra weight (>= 1) on the angular term of the cosine-bound loss.
        frequency_aware: spend extra stages on frequent tokens (needs a tokenizer or frequencies).
        frequency_share: share of the code bytes spent on the frequency tiers (``None``: by the
            target ratio, :func:`~lighttoken_hf.compressor.planner.default_frequency_share`).
        tier_decay: each frequency tier covers this fraction of the previous tier's rows.
        frequency_power: rows are weighted by ``frequency ** frequency_power`` in the losses (0: uniform).
        sensitivity_weighted: measure the error in the model's own sensitivity metric (see
            :mod:`~lighttoken_hf.compressor.sensitivity`; needs the model and its tokenizer, or a
            precomputed ``sensitivity=`` matrix); ``False`` gives the plain Euclidean error.
        sensitivity_shrinkage: how far that metric is shrunk toward the identity (0: the measured
            metric, 1: plain Euclidean).
        sensitivity_metric: which metric: ``"lm"`` (the Fisher information of the next-token
            distribution, input and tied-output side, with one weight per row; see
            :mod:`~lighttoken_hf.compressor.lm_sensitivity`), ``"hidden_states"`` (the sensitivity of
            the last hidden states, the encoder metric) or ``"auto"`` (default: ``"lm"`` for causal LMs,
            ``"hidden_states"`` for every other model).
        joint_iterations: rounds of joint refinement once every stage is trained (all decoders and
            the low-rank factor re-fitted together, then every row's bits across all stages; see
            :mod:`~lighttoken_hf.compressor.joint`); 0 keeps each stage as trained (the plain method).
        factor_dtype: storage dtype of the low-rank factors, decoder biases and scales.
        decoder_dtype: storage dtype of the decoder weights: ``"int8"`` (default; one scale per code
            bit, which frees about 12% of the budget for codes at no measured loss, docs/method.md) or
            a float dtype such as ``"float16"`` (the plain method).
        output_layer: for a language model whose output layer has its own (untied) V x d matrix:
            ``"compress"`` (default) compresses it too, at the same ratio, so ``ratio`` is the ratio over
            all the token matrices the model stores; ``"dense"`` keeps it as it is (its bytes are then
            outside the ratio, and the report says so). A tied output layer always shares the one
            compressed matrix.
        schedule: training schedule of each hashing stage.
        device: where the heavy steps run: ``"auto"`` (default: a CUDA GPU when torch sees one, else
            the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. The compressed module is built on the CPU
            either way; random numbers are drawn on the CPU, so a GPU gives the CPU's codes up to
            floating-point rounding (docs/method.md, "Scale").
        threads: torch threads during the compression on the CPU (``None``, the default: as many as
            there are idle cores when it starts, at most torch's own count, so that busy cores do not
            stall it; docs/method.md, "Scale").
        seed: makes codes reproducible.
    """

    ratio: float | None = 25.0
    budget_bytes: int | None = None
    svd_rank: int | None = None
    num_stages: int | None = None
    stage_bits: int | None = None
    max_stage_bits: int = 256
    loss: str = "mse"
    angle_weight: float = 1.0
    frequency_aware: bool = True
    frequency_share: float | None = None
    tier_decay: float = 0.35
    frequency_power: float = 0.5
    sensitivity_weighted: bool = True
    sensitivity_shrinkage: float = 0.25
    sensitivity_metric: str = "auto"
    joint_iterations: int = 8
    factor_dtype: str = "float16"
    decoder_dtype: str = "int8"
    output_layer: str = "compress"
    schedule: StageSchedule = field(default_factory=StageSchedule)
    device: str = "auto"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from .resources import resolve_device  # torch: only once settings are made, not for --help
        from .validation import check_settings

        check_settings(self)  # every field's type and range, one clear error each
        resolve_device(self.device)  # a bad or unavailable device fails here, before any work

    def to_dict(self) -> dict:
        """Every field as plain JSON values (the schedule as a dict)."""
        return dataclasses.asdict(self)

    def replace(self, **options: Any) -> CompressionSettings:
        """A copy with ``options`` changed (checked like the constructor's; unknown names raise)."""
        unknown = sorted(set(options) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(
                f"unknown compress() option(s) {unknown}; valid options: "
                f"{sorted(f.name for f in dataclasses.fields(self))}"
            )
        if options.get("budget_bytes") is not None and "ratio" not in options:
            options["ratio"] = None  # a byte budget replaces the default ratio
        return dataclasses.replace(self, **options)
