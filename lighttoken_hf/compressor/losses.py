r"""Reconstruction losses for the hashing stages.

The LightToken loss bounds the squared Euclidean error from above while putting more weight on the
angle between a row ``x`` and its reconstruction ``y``. Writing ``c = cos(x, y)``,

.. math::

    \|x - y\|^2 = (|x| - |y|)^2 + 2|x||y|(1 - c)
               \le (|x| - |y|)^2 + (|x|^2 + |y|^2)(1 - c) =: L(x, y)

because ``2|x||y| <= |x|^2 + |y|^2`` (AM-GM) and ``1 - c >= 0``. ``L`` equals the squared error
when the norms agree and otherwise charges the angular term at the larger weight
``|x|^2 + |y|^2``: MSE can lower its angular term by shrinking ``|y|``, ``L`` cannot, so minimising
``L`` favours getting the direction right. ``angle_weight`` (>= 1) scales the angular term further
and keeps the bound. Plain MSE and pure cosine (``1 - c``) remain available as ablations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .settings import LOSS_NAMES

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
_EPS = 1e-12


def _weighted_mean(per_row: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return per_row.mean()
    return (per_row * weights).sum() / weights.sum().clamp_min(_EPS)


def cosine_upper_bound_loss(
    x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None, *, angle_weight: float = 1.0
) -> torch.Tensor:
    """Row-weighted mean of ``(|x|-|y|)^2 + angle_weight * (|x|^2+|y|^2) * (1 - cos(x, y))`` (>= MSE per row)."""
    if angle_weight < 1.0:
        raise ValueError(f"angle_weight must be >= 1 to keep the upper bound, got {angle_weight}")
    nx2 = (x * x).sum(-1)
    ny2 = (y * y).sum(-1)
    nx, ny = nx2.clamp_min(_EPS).sqrt(), ny2.clamp_min(_EPS).sqrt()
    cos = (x * y).sum(-1) / (nx * ny)
    per_row = (nx - ny) ** 2 + angle_weight * (nx2 + ny2) * (1 - cos)
    return _weighted_mean(per_row, weights)


def mse_loss(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Row-weighted mean squared Euclidean error ``|x - y|^2`` (summed over the embedding dimension)."""
    return _weighted_mean(((x - y) ** 2).sum(-1), weights)


def cosine_loss(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Row-weighted mean of ``1 - cos(x, y)`` (ignores norms; an ablation)."""
    return _weighted_mean(1 - torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=1e-8), weights)


#: Each loss by its name in :data:`~lighttoken_hf.compressor.settings.LOSS_NAMES` (the settings' choices).
LOSSES: dict[str, LossFn] = dict(zip(LOSS_NAMES, (mse_loss, cosine_upper_bound_loss, cosine_loss)))


def get_loss(name: str) -> LossFn:
    """Look up a loss by name (``cosine_bound``, ``mse`` or ``cosine``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}") from None
