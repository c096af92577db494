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

from .checks import check_bool, check_choice, check_int, check_number

__all__ = [
    "DECODER_DTYPES",
    "FACTOR_DTYPES",
    "LOSS_NAMES",
    "OUTPUT_LAYERS",
    "BACKBONE_LIBRARIES",
    "BACKBONE_QUANTIZATIONS",
    "SENSITIVITY_METRICS",
    "SENSITIVITY_SHRINKAGE",
    "OUTPUT_BIAS_MAX_SHARE",
    "CompressionSettings",
    "StageSchedule",
]

#: Values of ``CompressionSettings.sensitivity_metric``: ``"auto"`` picks ``"lm"`` for causal LMs.
SENSITIVITY_METRICS = ("auto", "lm", "hidden_states")
#: Default ``sensitivity_shrinkage`` of each metric, measured: the encoder metric on all-MiniLM-L6-v2
#: (``sweep_defaults.py --preset sensitivity``), the LM metric on SmolLM2's dev paragraphs (``lm_sweep.py``).
SENSITIVITY_SHRINKAGE = {"hidden_states": 0.25, "lm": 0.05}
#: ``output_bias`` is used only where its V stored values take at most this share of the budget (about
#: ratio / 2d of it; SmolLM2: it paid at 0.7%, 2.2% and 4.3% (8x, 25x, 50x), cost more than it gave at 8.7%
#: (100x); docs/method.md).
OUTPUT_BIAS_MAX_SHARE = 0.05
#: Names of the reconstruction losses (:mod:`~lighttoken_hf.compressor.losses` implements each).
LOSS_NAMES = ("mse", "cosine_bound", "cosine")
#: Storage dtypes the low-rank factors, decoder biases and scales can have.
FACTOR_DTYPES = ("float16", "bfloat16", "float32", "float64")
#: Storage dtypes of the decoder weights.
DECODER_DTYPES = ("int8", *FACTOR_DTYPES)
#: Values of ``CompressionSettings.output_layer``.
OUTPUT_LAYERS = ("compress", "dense")
#: Values of ``CompressionSettings.quantize_backbone`` besides ``None`` (see compressor/backbone.py).
BACKBONE_QUANTIZATIONS = ("int8", "int4")

#: The library that quantizes the backbone to each of :data:`BACKBONE_QUANTIZATIONS` (its pip name).
BACKBONE_LIBRARIES = {"int8": "torchao", "int4": "compressed-tensors"}
#: Largest seed (seeds are 32-bit, as in numpy).
MAX_SEED = 2**32 - 1


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
            metric, 1: plain Euclidean); ``None`` (default): by metric, :data:`SENSITIVITY_SHRINKAGE`.
        sensitivity_metric: which metric: ``"lm"`` (the Fisher information of the next-token
            distribution, input and tied-output side, with one weight per row; see
            :mod:`~lighttoken_hf.compressor.lm_sensitivity`), ``"hidden_states"`` (the sensitivity of
            the last hidden states, the encoder metric) or ``"auto"`` (default: ``"lm"`` for causal LMs,
            ``"hidden_states"`` for every other model).
        output_bias: for a causal LM whose output layer is tied to the input embedding, measured with the
            LM metric: store one logit bias per token (``factor_dtype``, counted in the budget) that cancels
            the mean logit error of its compressed row (``c_v = -mu_v . delta_v``, see
            :mod:`~lighttoken_hf.compressor.lm_sensitivity`): ``True``, ``False``, or ``None`` (default):
            where it takes at most :data:`OUTPUT_BIAS_MAX_SHARE` of the budget. Ignored for other models.
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
        quantize_backbone: whole-model compression: ``"int8"`` quantizes the weights of every Linear layer of
            the backbone (torchao weight-only int8, one scale per output channel, through transformers'
            ``TorchAoConfig``), ``"int4"`` to int4 in groups of 32 with an fp16 scale each
            (compressed-tensors' pack-quantized format; the levels rounded by GPTQ on the calibration texts
            when a tokenizer is known; value projections of grouped-query attention in int6); the checkpoint
            then needs that library to load (:data:`BACKBONE_LIBRARIES`). ``None`` (default) keeps them.
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
    sensitivity_shrinkage: float | None = None
    sensitivity_metric: str = "auto"
    output_bias: bool | None = None
    joint_iterations: int = 8
    factor_dtype: str = "float16"
    decoder_dtype: str = "int8"
    output_layer: str = "compress"
    quantize_backbone: str | None = None
    schedule: StageSchedule = field(default_factory=StageSchedule)
    device: str = "auto"
    threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        from .resources import resolve_device  # torch: only once settings are made, not for --help

        _check_settings(self)  # every field's type and range, one clear error each
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


def _check_settings(settings: Any) -> None:
    """Check (and normalise in place) every field of a ``CompressionSettings``; raise on the first bad one.

    Types are normalised (numpy scalars to Python, a ``torch.dtype`` to its name, a schedule dict to
    a :class:`StageSchedule`) so that the settings serialise to JSON as they are.
    """
    s = settings
    if s.ratio is not None:
        s.ratio = check_number("ratio", s.ratio)  # the planner checks > 1 (with what is possible)
    if s.budget_bytes is not None:
        if isinstance(s.budget_bytes, float) and s.budget_bytes.is_integer():
            s.budget_bytes = int(s.budget_bytes)  # 1e6 is a whole number of bytes
        s.budget_bytes = check_int("budget_bytes", s.budget_bytes, minimum=1)
    if s.ratio is None and s.budget_bytes is None:
        raise ValueError("give a target: ratio= (e.g. 25) or budget_bytes=")
    for name, minimum in (("svd_rank", 0), ("num_stages", 0), ("stage_bits", 8)):
        if getattr(s, name) is not None:
            setattr(s, name, check_int(name, getattr(s, name), minimum=minimum))
    s.max_stage_bits = check_int("max_stage_bits", s.max_stage_bits, minimum=8)
    s.loss = check_choice("loss", s.loss, LOSS_NAMES)
    s.angle_weight = check_number("angle_weight", s.angle_weight, low=1)
    s.frequency_aware = check_bool("frequency_aware", s.frequency_aware)
    if s.frequency_share is not None:
        s.frequency_share = check_number("frequency_share", s.frequency_share, low=0, high=1, high_open=True)
    s.tier_decay = check_number("tier_decay", s.tier_decay, low=0, high=1, low_open=True, high_open=True)
    s.frequency_power = check_number("frequency_power", s.frequency_power, low=0)
    s.sensitivity_weighted = check_bool("sensitivity_weighted", s.sensitivity_weighted)
    if s.sensitivity_shrinkage is not None:
        s.sensitivity_shrinkage = check_number("sensitivity_shrinkage", s.sensitivity_shrinkage, low=0, high=1)
    s.sensitivity_metric = check_choice("sensitivity_metric", s.sensitivity_metric, SENSITIVITY_METRICS)
    if s.output_bias is not None:
        s.output_bias = check_bool("output_bias", s.output_bias)
    s.joint_iterations = check_int("joint_iterations", s.joint_iterations, minimum=0)
    s.factor_dtype = check_choice("factor_dtype", s.factor_dtype, FACTOR_DTYPES)
    s.decoder_dtype = check_choice("decoder_dtype", s.decoder_dtype, DECODER_DTYPES)
    s.output_layer = check_choice("output_layer", s.output_layer, OUTPUT_LAYERS)
    if s.quantize_backbone is not None:
        s.quantize_backbone = check_choice("quantize_backbone", s.quantize_backbone, BACKBONE_QUANTIZATIONS)
    s.schedule = _check_schedule(s.schedule)
    if s.threads is not None:
        s.threads = check_int("threads", s.threads, minimum=1)
    s.seed = check_int("seed", s.seed, minimum=0, maximum=MAX_SEED)


def _check_schedule(schedule: Any) -> StageSchedule:
    """A :class:`StageSchedule` from itself or a dict of its fields, each of its default's type."""
    if isinstance(schedule, StageSchedule):
        values = dataclasses.asdict(schedule)
    elif isinstance(schedule, dict):
        values = dict(schedule)
    else:
        raise TypeError(
            f"schedule must be a StageSchedule or a dict of its fields, got {type(schedule).__name__} {schedule!r}"
        )
    fields = {f.name: f.default for f in dataclasses.fields(StageSchedule)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TypeError(f"unknown schedule option(s) {unknown}; valid: {sorted(fields)}")
    for name, value in values.items():
        if value is None and fields[name] is not None and name != "rows_per_epoch":
            raise TypeError(f"schedule.{name} must be a number, got None")
        if value is not None:
            check = check_int if isinstance(fields[name], int) else check_number
            values[name] = check(f"schedule.{name}", value)
    return StageSchedule(**values)
