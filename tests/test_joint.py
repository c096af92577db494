"""Joint refinement of all stages: bit coordinate descent and the joint least-squares fit."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_SCHEDULE, make_planted_matrix
from hypothesis import given, settings
from hypothesis import strategies as st

from lighttoken_hf import compress
from lighttoken_hf.compressor.hashing import refine_bits
from lighttoken_hf.compressor.joint import refine_jointly


def _problem(seed: int, n: int = 300, d: int = 12, bits: int = 20, skip: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(bits, d, generator=g) * 0.3
    signs = torch.where(torch.rand(n, bits, generator=g) < 0.5, -1.0, 1.0)
    signs[torch.rand(n, bits, generator=g) < skip] = 0.0  # bits a row does not have
    target = torch.randn(n, d, generator=g)
    return signs, target, weight


def _row_errors(signs, target, weight):
    return ((target - signs @ weight) ** 2).sum(1)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.0, 0.3]), st.sampled_from([8, 40]))
def test_refine_bits_reaches_a_local_minimum_without_raising_any_row_error(seed, skip, bits):
    # 40 bits over 300 rows start with many flips per bit (dense update), later sweeps flip few (sparse)
    signs, target, weight = _problem(seed, bits=bits, skip=skip)
    before = _row_errors(signs, target, weight)
    refined, flips = refine_bits(signs.clone(), target, weight, torch.zeros(weight.shape[1]), sweeps=100)
    after = _row_errors(refined, target, weight)
    assert bool((after <= before + 1e-4).all())
    assert torch.equal(refined == 0, signs == 0)  # a bit a row does not have never appears
    assert flips >= int((refined != signs).sum())  # a bit may flip back and forth
    # no single flip lowers any row's error any more (the tracked projections were kept exact)
    for j in range(weight.shape[0]):
        flipped = refined.clone()
        flipped[:, j] = -flipped[:, j]
        assert bool((_row_errors(flipped, target, weight) >= after - 1e-4).all()), j


@pytest.mark.parametrize("width", [8, 40])
def test_refine_jointly_lowers_the_weighted_error_monotonically(width):
    # 8 bits a stage: a sweep flips many of a moved row's bits (dense updates of the normal equations);
    # 40: few of them (sparse updates)
    g = torch.Generator().manual_seed(0)
    n, d, k = 400, 10, 2
    signs, target, _ = _problem(1, n=n, d=d, bits=3 * width)
    covered = torch.ones(n, 3)
    covered[200:, 2] = 0.0  # the third stage skips half of the rows
    signs[200:, 2 * width :] = 0.0
    left = torch.randn(n, k, generator=g)
    weights = torch.rand(n, generator=g) + 0.1
    fit = refine_jointly(target, left, signs, [width] * 3, covered, weights, iterations=6, ridge=1e-6)
    errors = [h["weighted_rel_error"] for h in fit.stats["history"]]
    assert len(errors) >= 2
    assert all(b <= a + 1e-5 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < errors[0]
    assert torch.equal(fit.signs == 0, signs == 0)
    # the reported error is the error of the returned parameters (normal equations = direct residual)
    recon = (
        left @ fit.right
        + fit.signs @ torch.cat(fit.decoder_weights)
        + covered @ torch.stack(fit.decoder_biases)
    )
    direct = float((weights * ((target - recon) ** 2).sum(1)).sum() / (weights * (target**2).sum(1)).sum())
    assert errors[-1] == pytest.approx(direct**0.5, rel=1e-3)
    assert [w.shape[0] for w in fit.decoder_weights] == [width] * 3
    # two stages over the same rows share one bias; a stage over fewer rows keeps its own
    assert torch.count_nonzero(fit.decoder_biases[1]) == 0


def test_refine_jointly_rejects_mismatched_stage_widths():
    signs, target, _ = _problem(0, bits=16)
    with pytest.raises(ValueError, match="stage_bits"):
        refine_jointly(
            target, torch.zeros(300, 0), signs, [8, 4], torch.ones(300, 2), torch.ones(300), iterations=1
        )


def test_compress_with_joint_refinement_beats_stagewise_at_equal_bytes():
    e = make_planted_matrix()
    plain = compress(e, 8, progress=False, schedule=FAST_SCHEDULE, joint_iterations=0)
    joint = compress(e, 8, progress=False, schedule=FAST_SCHEDULE)
    assert joint.compressed_nbytes == plain.compressed_nbytes
    assert joint.stage_bits == plain.stage_bits
    assert plain.compression_report.joint == {}
    stats = joint.compression_report.joint
    assert 1 <= stats["iterations"] <= 8
    err = lambda m: float((e - m.weight.detach()).norm() / e.norm())  # noqa: E731
    assert err(joint) < err(plain)
    assert joint.compression_report.fidelity["rel_error"] == pytest.approx(err(joint), rel=1e-4)
    assert "joint refinement" in joint.compression_report.summary()


def test_negative_joint_iterations_is_a_clear_error():
    with pytest.raises(ValueError, match="joint_iterations"):
        compress(make_planted_matrix(vocab=64, dim=8), 4, progress=False, joint_iterations=-1)


@pytest.mark.parametrize("gram_dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("columns", [30, 512, 1100])
def test_normal_equations_equal_the_dense_weighted_products(columns, gram_dtype):
    # built tile by tile over the Gram matrix's upper triangle, one row block at a time; the joint
    # refinement keeps its (large) Gram matrix in float32
    from lighttoken_hf.compressor.least_squares import normal_equations

    g = torch.Generator().manual_seed(columns)
    n = 3000
    signs = torch.where(torch.rand(n, columns, generator=g) < 0.5, -1, 1).to(torch.int8)
    signs[:100, -5:] = 0  # bits some rows do not have
    fixed, target, weights = (
        torch.randn(n, 3, generator=g),
        torch.randn(n, 7, generator=g),
        torch.rand(n, generator=g),
    )
    gram, rhs = normal_equations(signs, fixed, target, weights, gram_dtype=gram_dtype)
    assert gram.dtype == gram_dtype and rhs.dtype == torch.float64
    design = torch.cat([signs.double(), fixed.double()], 1)
    weighted = design * weights.double().unsqueeze(1)
    assert torch.allclose(gram.double(), design.T @ weighted, rtol=1e-5, atol=1e-3)
    assert torch.allclose(rhs, weighted.T @ target.double(), rtol=1e-5, atol=1e-3)
    assert torch.equal(gram, gram.T)


def test_packed_signs_read_write_and_refine_like_the_int8_matrix():
    from lighttoken_hf.compressor.joint import PackedSigns
    from lighttoken_hf.core.lighttoken_codec import pack_bits

    n, d, widths = 300, 6, [11, 5, 9]  # widths that do not fill whole bytes
    signs, target, _ = _problem(2, n=n, d=d, bits=sum(widths))
    covered = torch.ones(n, 3)
    covered[150:, 2] = 0.0
    signs[150:, 16:] = 0.0
    start, packed = 0, []
    for width in widths:
        packed.append(pack_bits(signs[:, start : start + width] > 0))
        start += width
    packed_signs = PackedSigns(packed, widths, covered)
    assert packed_signs.shape == (n, sum(widths))
    assert torch.equal(packed_signs[:], signs.to(torch.int8))
    assert torch.equal(packed_signs[torch.tensor([3, 200])], signs[[3, 200]].to(torch.int8))
    assert torch.equal(
        packed_signs.with_coverage()[10:20], torch.cat([signs[10:20], covered[10:20]], 1).to(torch.int8)
    )
    flipped = -signs[:40]
    packed_signs[:40] = flipped
    assert torch.equal(packed_signs[:40], flipped.to(torch.int8))
    packed_signs[:40] = signs[:40]
    # the joint refinement gives the same result on packed and on int8 signs
    left, weights = torch.randn(n, 2, generator=torch.Generator().manual_seed(3)), torch.ones(n)
    plain = refine_jointly(target, left, signs.to(torch.int8), widths, covered, weights, iterations=3)
    fit = refine_jointly(target, left, packed_signs, widths, covered, weights, iterations=3)
    assert torch.equal(fit.signs[:], plain.signs)
    assert torch.allclose(fit.right, plain.right) and torch.allclose(
        fit.decoder_weights[0], plain.decoder_weights[0]
    )


def test_solve_ridge_solves_in_float64_and_leaves_the_equations_as_they_were():
    from lighttoken_hf.compressor.least_squares import solve_ridge

    g = torch.Generator().manual_seed(3)
    design, target = torch.randn(500, 40, generator=g, dtype=torch.float64), torch.randn(500, 6, generator=g)
    gram, rhs = design.T @ design, design.T @ target.double()
    theta64, error64 = solve_ridge(gram.clone(), rhs, 1e-3, free=2, total=float((target.double() ** 2).sum()))
    gram32 = gram.float()
    kept = gram32.clone()
    theta32, error32 = solve_ridge(gram32, rhs, 1e-3, free=2, total=float((target.double() ** 2).sum()))
    assert torch.equal(gram32, kept)
    assert torch.allclose(theta32, theta64, rtol=1e-4, atol=1e-5)
    assert abs(error32 - error64) <= 1e-4 * error64
    # the error is that of the residual, formed here explicitly
    reg = torch.full((40,), 1e-3 * float(gram.diagonal().mean()), dtype=torch.float64)
    reg[-2:] = 1e-9 * float(gram.diagonal().mean())
    exact = torch.linalg.solve(gram + torch.diag(reg), rhs)
    assert abs(error64 - float(((design @ exact - target.double()) ** 2).sum())) <= 1e-6 * error64
