"""The ratio planner: real ratio >= target, byte-exact accounting, clear errors for impossible targets."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lighttoken_hf import LightTokenEmbedding, plan_for_ratio

FACTOR_DTYPES = {2: torch.float16, 4: torch.float32}


def module_for(plan) -> LightTokenEmbedding:
    """The (empty) LightTokenEmbedding with the plan's shapes."""
    return LightTokenEmbedding(
        plan.num_embeddings,
        plan.embedding_dim,
        svd_rank=plan.svd_rank,
        stage_bits=plan.stage_bits,
        stage_rows=plan.stage_rows,
        padding_idx=0 if plan.has_padding_row else None,
        factor_dtype=FACTOR_DTYPES[plan.factor_bytes],
        decoder_dtype=torch.int8 if plan.int8_decoders else FACTOR_DTYPES[plan.factor_bytes],
    )


def stored_bytes(module: LightTokenEmbedding) -> int:
    """Bytes of everything in the module's state_dict (what a checkpoint stores)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def smallest_plan_bytes(v: int, d: int, factor_bytes: int = 2, padding: bool = False) -> int:
    """Bytes of the cheapest LightToken plan with a hashing stage: no SVD, one 8-bit stage over all rows."""
    return v * 1 + (8 + 1) * d * factor_bytes + (d * factor_bytes if padding else 0)


def check_plan(plan, v: int, d: int, *, ratio: float | None = None, budget: int | None = None) -> None:
    assert plan.num_embeddings == v and plan.embedding_dim == d
    module = module_for(plan)
    assert plan.nbytes == module.compressed_nbytes == stored_bytes(module)
    assert plan.ratio == pytest.approx(v * d * 4 / plan.nbytes)
    if ratio is not None:
        assert plan.ratio >= ratio
    if budget is not None:
        assert plan.nbytes <= budget
    assert len(plan.stage_bits) == len(plan.stage_rows)
    assert all(b >= 1 for b in plan.stage_bits)
    assert all(1 <= r <= v for r in plan.stage_rows)
    assert 0 <= plan.svd_rank <= min(v, d)


def assert_informative(err: BaseException | pytest.ExceptionInfo) -> None:
    msg = str(err.value if isinstance(err, pytest.ExceptionInfo) else err)
    assert re.search(r"\d", msg), msg
    assert "ratio" in msg.lower(), msg


# ------------------------------------------------------------------ feasible targets
@pytest.mark.parametrize(
    ("v", "d", "ratio"),
    [
        (200, 32, 4),
        (512, 32, 8),
        (1000, 64, 10),
        (5000, 128, 25),
        (30522, 384, 25),
        (30522, 384, 100),
        (50257, 768, 50),
        (128, 16, 1.5),
        (100, 8, 2.0),
    ],
)
@pytest.mark.parametrize("frequency_aware", [False, True])
@pytest.mark.parametrize("padding", [False, True])
@pytest.mark.parametrize("int8_decoders", [False, True])
def test_plan_meets_ratio_and_counts_bytes_exactly(v, d, ratio, frequency_aware, padding, int8_decoders):
    plan = plan_for_ratio(
        v, d, ratio, frequency_aware=frequency_aware, has_padding_row=padding, int8_decoders=int8_decoders
    )
    check_plan(plan, v, d, ratio=ratio)
    assert plan.stage_bits, "a feasible target should get at least one hashing stage"


@given(
    v=st.integers(2, 3000),
    d=st.integers(1, 200),
    ratio=st.floats(1.01, 300.0),
    frequency_aware=st.booleans(),
    padding=st.booleans(),
    factor_bytes=st.sampled_from([2, 4]),
    int8_decoders=st.booleans(),
)
def test_plan_property(v, d, ratio, frequency_aware, padding, factor_bytes, int8_decoders):
    assume(v * d * 4 // ratio >= 1)  # a zero-byte budget is covered by test_ratio_above_dense_bytes
    try:
        plan = plan_for_ratio(
            v, d, ratio, frequency_aware=frequency_aware, has_padding_row=padding, factor_bytes=factor_bytes,
            int8_decoders=int8_decoders,
        )  # fmt: skip
    except ValueError as err:
        # refusing is only allowed when the target is really out of reach, and must say why
        assert "ratio" in str(err).lower()
        return
    check_plan(plan, v, d, ratio=ratio)


@given(
    v=st.integers(2, 3000),
    d=st.integers(1, 200),
    ratio=st.floats(1.01, 300.0),
    frequency_aware=st.booleans(),
    padding=st.booleans(),
)
def test_feasible_targets_are_planned(v, d, ratio, frequency_aware, padding):
    # If the smallest plan with a hashing stage fits, the planner must find a plan: frequency awareness
    # is an optimisation (its token-rank table is optional), not a reason to refuse.
    budget = int(v * d * 4 // ratio)
    if smallest_plan_bytes(v, d, padding=padding) > budget:
        return
    plan = plan_for_ratio(v, d, ratio, frequency_aware=frequency_aware, has_padding_row=padding)
    check_plan(plan, v, d, ratio=ratio)


def test_feasible_target_at_the_boundary():
    # exactly the smallest plan's size: a uniform 8-bit stage for all 1000 rows (1000 + 9 * 16 * 2 bytes)
    budget = smallest_plan_bytes(1000, 16)
    for frequency_aware in (False, True):
        plan = plan_for_ratio(1000, 16, budget_bytes=budget, frequency_aware=frequency_aware)
        check_plan(plan, 1000, 16, budget=budget)


@given(
    v=st.integers(2, 3000),
    d=st.integers(1, 200),
    budget=st.integers(1, 400_000),
    frequency_aware=st.booleans(),
)
def test_budget_bytes_is_respected(v, d, budget, frequency_aware):
    try:
        plan = plan_for_ratio(v, d, budget_bytes=budget, frequency_aware=frequency_aware)
    except ValueError:
        return
    check_plan(plan, v, d, budget=budget)


@given(
    v=st.integers(50, 6000),
    d=st.integers(4, 200),
    ratio=st.floats(1.05, 60.0),
    max_stage_bits=st.sampled_from([8, 64, 128, 256]),
    frequency_aware=st.booleans(),
)
def test_stages_respect_max_stage_bits(v, d, ratio, max_stage_bits, frequency_aware):
    try:
        plan = plan_for_ratio(v, d, ratio, max_stage_bits=max_stage_bits, frequency_aware=frequency_aware)
    except ValueError:
        return
    check_plan(plan, v, d, ratio=ratio)
    assert max(plan.stage_bits) <= max_stage_bits, plan.stage_bits


def test_stage_width_example():
    # 5000 x 128 at ratio 1.5 needs many stages; none may be wider than max_stage_bits (256 by default)
    plan = plan_for_ratio(5000, 128, 1.5, frequency_aware=False)
    assert max(plan.stage_bits) <= 256, plan.stage_bits


def test_frequency_aware_plan_spends_extra_stages_on_frequent_rows():
    plan = plan_for_ratio(30522, 384, 25, frequency_aware=True)
    check_plan(plan, 30522, 384, ratio=25)
    assert plan.has_tiers
    assert min(plan.stage_rows) < 30522
    # the first stages cover every row, later ones fewer and fewer (most frequent first)
    assert plan.stage_rows[0] == 30522
    assert plan.stage_rows == sorted(plan.stage_rows, reverse=True)


@settings(max_examples=60, deadline=None)
@given(
    v=st.integers(2000, 120_000),
    d=st.sampled_from([64, 128, 384, 768, 1024]),
    ratio=st.floats(8, 100),
    share=st.floats(0.1, 0.7),
    decay=st.floats(0.25, 0.6),
    int8_decoders=st.booleans(),
)
def test_frequency_aware_plans_spend_the_budget(v, d, ratio, share, decay, int8_decoders):
    """Bytes the tiers leave go to wider base stages and then to more tier rows: nothing is wasted."""
    try:
        plan = plan_for_ratio(v, d, ratio, frequency_share=share, tier_decay=decay, int8_decoders=int8_decoders)
    except ValueError:
        return  # not even a uniform plan fits this small matrix at this ratio
    budget = int(v * d * 4 // ratio)
    assert plan.nbytes <= budget
    tiers = [r for r in plan.stage_rows if r < v]
    if tiers and max(tiers) < v - 1:  # (a tier stretched to every row but one cannot grow further)
        assert plan.nbytes >= 0.995 * budget, (plan.nbytes, budget, plan.stage_bits, plan.stage_rows)
        assert plan.stage_rows == sorted(plan.stage_rows, reverse=True)


def test_uniform_plan_covers_every_row():
    plan = plan_for_ratio(30522, 384, 25, frequency_aware=False)
    assert not plan.has_tiers
    assert plan.stage_rows == [30522] * len(plan.stage_bits)


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_pinned_stage_count(stages):
    plan = plan_for_ratio(5000, 64, 10, num_stages=stages, frequency_aware=False)
    check_plan(plan, 5000, 64, ratio=10)
    assert len(plan.stage_bits) == stages


def test_pinned_stage_bits():
    plan = plan_for_ratio(5000, 64, 10, stage_bits=16, frequency_aware=False)
    check_plan(plan, 5000, 64, ratio=10)
    assert plan.stage_bits and set(plan.stage_bits) == {16}


def test_pinned_svd_rank():
    plan = plan_for_ratio(5000, 64, 10, svd_rank=5, frequency_aware=False)
    check_plan(plan, 5000, 64, ratio=10)
    assert plan.svd_rank == 5


# ------------------------------------------------------------------ SVD-only ablation
@given(v=st.integers(2, 3000), d=st.integers(1, 200), ratio=st.floats(1.01, 100.0), padding=st.booleans())
def test_svd_only_plan(v, d, ratio, padding):
    assume(v * d * 4 // ratio >= 1)  # a zero-byte budget is covered by test_ratio_above_dense_bytes
    try:
        plan = plan_for_ratio(v, d, ratio, num_stages=0, has_padding_row=padding)
    except ValueError as err:
        # only when not even a rank-1 factorisation fits
        rank1 = (v + d) * 2 + (d * 2 if padding else 0)
        assert rank1 > int(v * d * 4 // ratio)
        assert_informative(err)
        return
    check_plan(plan, v, d, ratio=ratio)
    assert plan.stage_bits == [] and plan.stage_rows == []
    assert plan.svd_rank >= 1
    # the largest rank within the budget
    if plan.svd_rank < min(v, d):
        bigger = (v + d) * (plan.svd_rank + 1) * 2 + (d * 2 if padding else 0)
        assert v * d * 4 / bigger < ratio


def test_svd_only_example():
    plan = plan_for_ratio(512, 32, 8, num_stages=0)
    assert plan.stage_bits == []
    assert plan.svd_rank == (512 * 32 * 4 // 8) // ((512 + 32) * 2)
    check_plan(plan, 512, 32, ratio=8)


# ------------------------------------------------------------------ impossible targets
@pytest.mark.parametrize("ratio", [1, 1.0, 0.5, 0, -3, math.nan])
def test_ratio_must_exceed_one(ratio):
    with pytest.raises(ValueError, match="ratio") as err:
        plan_for_ratio(1000, 64, ratio)
    assert_informative(err)


@pytest.mark.parametrize(("v", "d"), [(200, 32), (1000, 64), (30522, 384), (100, 8)])
@pytest.mark.parametrize("frequency_aware", [False, True])
def test_ratio_beyond_one_stage_decoder_raises(v, d, frequency_aware):
    # budget smaller than the decoder (8 bit rows + bias, fp16) of a single 8-bit stage
    decoder_bytes = 9 * d * 2
    ratio = v * d * 4 / (decoder_bytes - 1)
    with pytest.raises(ValueError) as err:
        plan_for_ratio(v, d, ratio, frequency_aware=frequency_aware)
    assert_informative(err)


@pytest.mark.parametrize("frequency_aware", [False, True])
def test_impossible_message_states_the_smallest_size(frequency_aware):
    # below the smallest plan: the message should tell the smallest size (or the largest ratio)
    v, d = 1000, 16
    smallest = smallest_plan_bytes(v, d)  # 1288 bytes: ratio 49.7
    budget = smallest - 60  # ratio 51.7
    with pytest.raises(ValueError) as err:
        plan_for_ratio(v, d, budget_bytes=budget, frequency_aware=frequency_aware)
    msg = str(err.value).replace(",", "")
    numbers = {float(x) for x in re.findall(r"\d+(?:\.\d+)?", msg)}
    max_ratio = round(v * d * 4 / smallest, 1)
    assert smallest in numbers or max_ratio in numbers, msg


@pytest.mark.parametrize("num_stages", [None, 0])
def test_ratio_above_dense_bytes(num_stages):
    # 10 x 4 fp32 is 160 bytes: ratio 1000 leaves a budget below one byte; that is a ValueError too
    with pytest.raises(ValueError) as err:
        plan_for_ratio(10, 4, 1000, num_stages=num_stages)
    assert_informative(err)


def test_exactly_one_target():
    with pytest.raises(ValueError):
        plan_for_ratio(1000, 64)
    with pytest.raises(ValueError):
        plan_for_ratio(1000, 64, 10, budget_bytes=1000)
    with pytest.raises(ValueError, match="budget"):
        plan_for_ratio(1000, 64, budget_bytes=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_stages": -1}, {"stage_bits": 0}, {"stage_bits": -8}, {"svd_rank": -1}, {"svd_rank": 65}],
)
def test_bad_structure_options(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        plan_for_ratio(1000, 64, 10, **kwargs)


def test_default_frequency_share_grows_with_the_ratio_and_is_recorded():
    from lighttoken_hf.compressor.planner import default_frequency_share

    shares = [default_frequency_share(r) for r in (2, 8, 25, 35, 50, 70, 100, 400)]
    assert shares == sorted(shares)
    assert shares[0] == shares[2] == 0.25 and shares[-2] == shares[-1] == 0.55
    for ratio in (25, 50, 100):
        plan = plan_for_ratio(30522, 384, ratio)
        assert plan.notes["frequency_share"] == pytest.approx(default_frequency_share(ratio))
    explicit = plan_for_ratio(30522, 384, 100, frequency_share=0.25)
    assert explicit.notes["frequency_share"] == 0.25 and explicit.stage_bits != plan.stage_bits


@pytest.mark.parametrize("ratio", [25, 100])
def test_int8_decoders_leave_more_bytes_for_codes(ratio):
    fp16 = plan_for_ratio(30522, 384, ratio)
    int8 = plan_for_ratio(30522, 384, ratio, int8_decoders=True)
    codes = lambda p: sum(r * ((b + 7) // 8) for b, r in zip(p.stage_bits, p.stage_rows))  # noqa: E731
    assert int8.nbytes <= 30522 * 384 * 4 // ratio and int8.ratio >= ratio
    assert codes(int8) > 1.05 * codes(fp16)
