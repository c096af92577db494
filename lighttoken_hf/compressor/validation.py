"""Checks of what a user hands to :func:`~lighttoken_hf.compressor.api.compress`: one clear error each.

Every setting is checked for its type and range (naming the setting and what it accepts) before any
work starts, and every input tensor for the values that would otherwise fail deep inside with a raw
error (``linalg.eigh`` on a zero or NaN matrix) or, worse, compress to something silently wrong
(negative frequencies, a non-PSD metric, values the factor dtype cannot hold). The planner's own
checks (ratio, byte budget, stage shapes) are in :mod:`~lighttoken_hf.compressor.planner`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import torch

from .resources import row_blocks
from .settings import (
    DECODER_DTYPES,
    FACTOR_DTYPES,
    LOSS_NAMES,
    OUTPUT_LAYERS,
    SENSITIVITY_METRICS,
    StageSchedule,
)

#: Largest seed (seeds are 32-bit, as in numpy).
MAX_SEED = 2**32 - 1
#: Rows with a larger norm overflow the float32 losses the stages are trained with (squared norms).
MAX_TRAINABLE_ROW_NORM = 2.0**56


def _got(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers too, never a bool or a float), within the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_got(value)}")
    value = int(value)
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` (an int or float, never a bool or a string) within the interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number (int or float), got {_got(value)}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        left = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        right = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f"in {left}, {right}" if low is not None and high is not None else None
        where = where or (f"{'>' if low_open else '>='} {low:g}" if low is not None else f"<= {high:g}")
        raise ValueError(f"{name} must be a finite number {where}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` (numpy bools too); strings such as ``"no"`` are refused, not truthy."""
    if isinstance(value, (str, bytes)) or value not in (True, False):
        raise TypeError(f"{name} must be True or False, got {_got(value)}")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value``, one of the strings ``choices`` (a ``torch.dtype`` is taken by its name)."""
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {list(choices)}, got {_got(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_settings(settings: Any) -> None:
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
    s.sensitivity_shrinkage = check_number("sensitivity_shrinkage", s.sensitivity_shrinkage, low=0, high=1)
    s.sensitivity_metric = check_choice("sensitivity_metric", s.sensitivity_metric, SENSITIVITY_METRICS)
    s.joint_iterations = check_int("joint_iterations", s.joint_iterations, minimum=0)
    s.factor_dtype = check_choice("factor_dtype", s.factor_dtype, FACTOR_DTYPES)
    s.decoder_dtype = check_choice("decoder_dtype", s.decoder_dtype, DECODER_DTYPES)
    s.output_layer = check_choice("output_layer", s.output_layer, OUTPUT_LAYERS)
    s.schedule = check_schedule(s.schedule)
    if s.threads is not None:
        s.threads = check_int("threads", s.threads, minimum=1)
    s.seed = check_int("seed", s.seed, minimum=0, maximum=MAX_SEED)


def check_schedule(schedule: Any) -> StageSchedule:
    """A :class:`StageSchedule` from itself or a dict of its fields, each of its default's type."""
    if isinstance(schedule, StageSchedule):
        values = dataclasses.asdict(schedule)
    elif isinstance(schedule, dict):
        values = dict(schedule)
    else:
        raise TypeError(f"schedule must be a StageSchedule or a dict of its fields, got {_got(schedule)}")
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


def check_matrix_values(matrix: torch.Tensor, factor_dtype: str) -> None:
    """Refuse a (finite, float) matrix that is all zero or whose values ``factor_dtype`` cannot hold."""
    largest = largest_value = 0.0
    for rows in row_blocks(*matrix.shape):  # no float64 copy of the whole matrix
        block = matrix[rows]
        largest = max(largest, float(torch.linalg.vector_norm(block, dim=1, dtype=torch.float64).max()))
        largest_value = max(largest_value, float(block.abs().max()))
    if largest == 0:
        raise ValueError(
            "the embedding matrix is all zeros: there is nothing to compress (check that the weights were loaded)"
        )
    if largest > MAX_TRAINABLE_ROW_NORM:
        raise ValueError(
            f"the embedding matrix has rows of norm up to {largest:.3g}, too large for LightToken's float32 "
            f"training (the squared errors overflow above about {MAX_TRAINABLE_ROW_NORM:.3g}): divide the matrix "
            "by a power of two before compressing and multiply the embeddings back"
        )
    info = torch.finfo(getattr(torch, factor_dtype))
    if largest > info.max:
        raise ValueError(
            f"the embedding matrix has rows of norm up to {largest:.3g}, but factor_dtype={factor_dtype!r} holds "
            f"values only up to {info.max:.5g}: its low-rank factors (a row's coordinates) would overflow to "
            'Inf. Use factor_dtype="float32" (or "bfloat16", half the bytes), which hold values up to '
            f"{torch.finfo(torch.float32).max:.3g}"
        )
    smallest_trainable = torch.finfo(torch.float32).tiny
    if largest_value < max(info.tiny, smallest_trainable):
        fix = (
            "scale the matrix up (multiply by a power of two) first"
            if largest_value < smallest_trainable
            else 'use factor_dtype="float32" or "bfloat16", or scale the matrix up first'
        )
        raise ValueError(
            f"the embedding matrix's values are all below {largest_value:.3g}, under the smallest normal "
            f"{factor_dtype} value ({info.tiny:.3g}): the compressed factors would round to zero; {fix}"
        )


def check_frequencies(frequencies: Any, rows: int) -> torch.Tensor:
    """Token frequencies as a float64 tensor of ``rows`` finite, non-negative values, not all zero."""
    what = f"token frequencies (one non-negative count or frequency per row, {rows} values)"
    try:
        freqs = torch.as_tensor(frequencies)
    except (TypeError, ValueError, RuntimeError) as err:
        kind = type(frequencies).__name__
        raise TypeError(f"{what} must be a tensor or a sequence of numbers, got {kind}") from err
    numeric = freqs.is_floating_point() or freqs.dtype.is_signed or freqs.dtype == torch.uint8
    if freqs.dtype == torch.bool or freqs.is_complex() or not numeric:
        raise TypeError(f"{what} must be numbers, got dtype {freqs.dtype}")
    freqs = freqs.detach().cpu().double()
    if freqs.dim() != 1 or freqs.numel() != rows:
        raise ValueError(
            f"token frequencies have shape {tuple(freqs.shape)} ({freqs.numel()} entries) but the matrix has "
            f"{rows} rows: pass {what}"
        )
    bad = (~torch.isfinite(freqs)).nonzero()
    if len(bad):
        raise ValueError(
            f"token frequencies contain NaN or Inf (first at token id {int(bad[0])}): pass {what}"
        )
    negative = (freqs < 0).nonzero()
    if len(negative):
        first = int(negative[0])
        raise ValueError(
            f"token frequencies must be >= 0, got {float(freqs[first]):g} at token id {first} "
            f"({len(negative)} negative in all)"
        )
    if not freqs.sum() > 0:
        raise ValueError(
            "token frequencies are all zero, so they rank no token above another: pass real counts, or "
            "frequency_aware=False for the uniform allocation"
        )
    return freqs


def check_sensitivity(sensitivity: Any, dim: int | None = None) -> torch.Tensor:
    """A sensitivity metric as a float64 d x d tensor: finite, symmetric, positive semi-definite, non-zero.

    Symmetry and semi-definiteness are checked to the rounding of the metric's own dtype.
    """
    if not isinstance(sensitivity, torch.Tensor) or not sensitivity.is_floating_point():
        kind = sensitivity.dtype if isinstance(sensitivity, torch.Tensor) else type(sensitivity).__name__
        raise TypeError(f"the sensitivity matrix must be a float torch.Tensor (d x d), got {kind}")
    shape = tuple(sensitivity.shape)
    if len(shape) != 2 or shape[0] != shape[1] or dim is not None and shape[0] != dim:
        want = f"{dim} x {dim}" if dim is not None else "square (d x d)"
        raise ValueError(f"the sensitivity matrix must be {want}, got shape {shape}")
    m = sensitivity.detach().cpu().double()
    if not torch.isfinite(m).all():
        raise ValueError("the sensitivity matrix contains NaN or Inf")
    size = float(m.abs().max())
    if size == 0:
        raise ValueError(
            "the sensitivity matrix is all zeros (the model's outputs do not depend on its embeddings?): "
            "pass a measured metric, or sensitivity_weighted=False for the plain Euclidean error"
        )
    tol = max(1e-6, 10 * shape[0] * torch.finfo(sensitivity.dtype).eps)
    asym = float((m - m.T).abs().max())
    if asym > tol * size:
        raise ValueError(
            f"the sensitivity matrix is not symmetric (|M - M^T| up to {asym:.3g}, entries up to {size:.3g}): "
            "a metric M = E[J^T J] is symmetric; pass (M + M.T) / 2 if it is a rounding effect"
        )
    lowest, highest = torch.linalg.eigvalsh((m + m.T) / 2)[[0, -1]].tolist()
    if highest <= 0 or lowest < -tol * highest:
        raise ValueError(
            f"the sensitivity matrix is not positive semi-definite (smallest eigenvalue {lowest:.3g}, largest "
            f"{highest:.3g}): a metric M = E[J^T J] has no negative eigenvalues"
        )
    return m


def check_finite_module(module: torch.nn.Module, factor_dtype: str) -> None:
    """After compression: every stored float tensor must be finite (a factor dtype overflow would not be)."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"the compressed {name} holds Inf or NaN: its values overflowed {tensor.dtype} (largest "
                f"{torch.finfo(tensor.dtype).max:.5g}; factor_dtype={factor_dtype!r}). Compress again with "
                'factor_dtype="float32" or factor_dtype="bfloat16", which hold values up to 3.4e38'
            )
