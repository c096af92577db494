"""Checks of what a user hands to :func:`~lighttoken_hf.compressor.api.compress`: one clear error each.

Every setting is checked for its type and range (naming the setting and what it accepts) before any
work starts, and every input tensor for the values that would otherwise fail deep inside with a raw
error (``linalg.eigh`` on a zero or NaN matrix) or, worse, compress to something silently wrong
(negative frequencies, a non-PSD metric, values the factor dtype cannot hold). The planner's own
checks (ratio, byte budget, stage shapes) are in :mod:`~lighttoken_hf.compressor.planner`.
"""

from __future__ import annotations

from typing import Any

import torch

from .resources import row_blocks

#: Rows with a larger norm overflow the float32 losses the stages are trained with (squared norms).
MAX_TRAINABLE_ROW_NORM = 2.0**56


def check_matrix(matrix: Any) -> torch.Tensor:
    """``matrix`` as a detached fp32 CPU tensor, refused with one clear error unless it is a finite 2-D float one."""
    if not isinstance(matrix, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor or a PreTrainedModel, got {type(matrix).__name__}")
    if matrix.dim() != 2:
        raise ValueError(f"the embedding matrix must be 2-D (vocab x dim), got shape {tuple(matrix.shape)}")
    if matrix.numel() == 0:
        raise ValueError(f"the embedding matrix is empty (shape {tuple(matrix.shape)})")
    if not matrix.is_floating_point():
        raise TypeError(f"the embedding matrix must be floating point, got {matrix.dtype}")
    matrix = matrix.detach().float().cpu()
    finite = all(bool(torch.isfinite(matrix[rows]).all()) for rows in row_blocks(*matrix.shape))
    if not finite:
        bad = (~torch.isfinite(matrix)).nonzero()[0].tolist()
        raise ValueError(
            f"the embedding matrix contains NaN or Inf (first at row {bad[0]}, column {bad[1]}); fix the weights first"
        )
    return matrix


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
