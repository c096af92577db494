"""The cosine upper-bound loss: >= squared error per row, equal when norms match, and its guards."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from lighttoken_hf.compressor.losses import cosine_loss, cosine_upper_bound_loss, get_loss, mse_loss

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def row_pairs(draw, max_rows: int = 6, max_dim: int = 8):
    """Two (n x d) float64 tensors of moderate values."""
    n = draw(st.integers(1, max_rows))
    d = draw(st.integers(1, max_dim))
    x = torch.tensor(draw(st.lists(finite, min_size=n * d, max_size=n * d)), dtype=torch.float64).view(n, d)
    y = torch.tensor(draw(st.lists(finite, min_size=n * d, max_size=n * d)), dtype=torch.float64).view(n, d)
    return x, y


def _slack(x: torch.Tensor, y: torch.Tensor) -> float:
    """Rounding allowance for comparing the two losses in float64."""
    return 1e-9 * float((x * x).sum() + (y * y).sum()) + 1e-9


@given(row_pairs(), st.floats(1.0, 10.0))
def test_bound_holds_per_row(pair, angle_weight):
    x, y = pair
    for i in range(x.shape[0]):
        xi, yi = x[i : i + 1], y[i : i + 1]
        bound = float(cosine_upper_bound_loss(xi, yi, angle_weight=angle_weight))
        mse = float(mse_loss(xi, yi))
        assert mse == pytest.approx(float(((xi - yi) ** 2).sum()), rel=1e-12, abs=1e-12)
        assert bound >= mse - _slack(xi, yi)


@given(row_pairs(), st.lists(st.floats(0.01, 100.0), min_size=6, max_size=6), st.floats(1.0, 10.0))
def test_bound_holds_with_row_weights(pair, weights, angle_weight):
    x, y = pair
    w = torch.tensor(weights[: x.shape[0]], dtype=torch.float64)
    bound = float(cosine_upper_bound_loss(x, y, w, angle_weight=angle_weight))
    assert bound >= float(mse_loss(x, y, w)) - _slack(x, y)


@given(row_pairs(), st.floats(1.0, 10.0))
def test_larger_angle_weight_never_lowers_the_loss(pair, angle_weight):
    x, y = pair
    base = float(cosine_upper_bound_loss(x, y))
    assert float(cosine_upper_bound_loss(x, y, angle_weight=angle_weight)) >= base - _slack(x, y)


@given(row_pairs(), st.floats(1.0, 10.0))
def test_weighted_mean_of_rows(pair, angle_weight):
    # the batch loss is the weighted mean of the per-row losses
    x, y = pair
    w = torch.arange(1, x.shape[0] + 1, dtype=torch.float64)
    per_row = torch.stack(
        [
            cosine_upper_bound_loss(x[i : i + 1], y[i : i + 1], angle_weight=angle_weight)
            for i in range(len(x))
        ]
    )
    expected = float((per_row * w).sum() / w.sum())
    got = float(cosine_upper_bound_loss(x, y, w, angle_weight=angle_weight))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


@given(row_pairs(), st.lists(st.floats(0.01, 100.0), min_size=6, max_size=6))
def test_equal_to_squared_error_when_norms_match(pair, weights):
    x, y = pair
    assume(bool((x.norm(dim=1) > 1e-3).all()) and bool((y.norm(dim=1) > 1e-3).all()))
    y = y / y.norm(dim=1, keepdim=True) * x.norm(dim=1, keepdim=True)  # same norms, other directions
    w = torch.tensor(weights[: x.shape[0]], dtype=torch.float64)
    for args in ((), (w,)):
        bound = float(cosine_upper_bound_loss(x, y, *args))
        mse = float(mse_loss(x, y, *args))
        assert bound == pytest.approx(mse, rel=1e-7, abs=1e-9)


def test_hand_computed_values():
    x = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([[0.0, 1.0]])
    # (|x| - |y|)^2 + (|x|^2 + |y|^2)(1 - cos) = 1 + 5 * 1; squared error = 4 + 1
    assert float(cosine_upper_bound_loss(x, y)) == pytest.approx(6.0)
    assert float(mse_loss(x, y)) == pytest.approx(5.0)
    # angle_weight scales only the angular term: 1 + 2 * 5
    assert float(cosine_upper_bound_loss(x, y, angle_weight=2.0)) == pytest.approx(11.0)
    assert float(cosine_loss(x, y)) == pytest.approx(1.0)
    # identical rows: zero loss
    assert float(cosine_upper_bound_loss(x, x)) == pytest.approx(0.0, abs=1e-6)


def test_gradient_is_finite_for_zero_rows():
    # an all-zero reconstruction (e.g. a fresh decoder) must not produce NaN gradients
    x = torch.tensor([[1.0, -2.0, 0.5]])
    y = torch.zeros(1, 3, requires_grad=True)
    cosine_upper_bound_loss(x, y).backward()
    assert torch.isfinite(y.grad).all()


@pytest.mark.parametrize("angle_weight", [0.999, 0.5, 0.0, -1.0])
def test_rejects_angle_weight_below_one(angle_weight):
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="angle_weight"):
        cosine_upper_bound_loss(x, x, angle_weight=angle_weight)


def test_get_loss_known_names():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    assert float(get_loss("mse")(x, y)) == pytest.approx(float(((x - y) ** 2).sum(1).mean()), rel=1e-6)
    assert float(get_loss("cosine_bound")(x, y)) >= float(get_loss("mse")(x, y)) - 1e-5
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1)
    assert float(get_loss("cosine")(x, y)) == pytest.approx(float((1 - cos).mean()), rel=1e-6)


@pytest.mark.parametrize("name", ["l2", "MSE", "", "cosine-bound"])
def test_get_loss_rejects_unknown_names(name):
    with pytest.raises(ValueError, match="unknown loss") as err:
        get_loss(name)
    # the message lists the valid names
    for valid in ("cosine_bound", "mse", "cosine"):
        assert valid in str(err.value)


def test_bound_is_finite_for_large_values():
    x = torch.full((1, 4), 1e3)
    y = torch.full((1, 4), -1e3)
    assert math.isfinite(float(cosine_upper_bound_loss(x, y)))
