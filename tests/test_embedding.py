"""LightTokenEmbedding: lookups match the reconstructed matrix, errors, serialisation and dtype handling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from lighttoken_hf import LightTokenEmbedding

#: (V, d, svd_rank, stage_bits, stage_rows, padding_idx, row_index, decoder_dtype): SVD only, hashing
#: only, mixed with frequency tiers (coverage masks) and a padding row, the same with int8 decoders, and a
#: padding index given from the end (fp16 decoders unless int8 is named).
LAYOUTS = {
    "svd_only": (40, 6, 3, (), None, None, "coverage", torch.float16),
    "hashing_only": (40, 6, 0, (5, 16), None, None, "coverage", torch.float16),
    "tiers_padding": (50, 12, 3, (9, 16, 8), (50, 20, 7), 0, "coverage", torch.float16),
    "tiers_int8": (50, 12, 3, (9, 16, 8), (50, 20, 7), 0, "coverage", torch.int8),
    "negative_padding": (30, 4, 2, (1, 12), (30, 11), -1, "coverage", torch.float16),
}


def random_embedding(layout: str, seed: int = 0, factor_dtype=torch.float16) -> LightTokenEmbedding:
    """A LightTokenEmbedding with random stored tensors (random code bytes, coverage masks a random set of
    the stage's row count)."""
    v, d, rank, bits, rows, padding_idx, row_index, decoder_dtype = LAYOUTS[layout]
    m = LightTokenEmbedding(
        v, d, svd_rank=rank, stage_bits=bits, stage_rows=rows, padding_idx=padding_idx,
        factor_dtype=factor_dtype, row_index=row_index, decoder_dtype=decoder_dtype,
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in itertools.chain(m.named_parameters(), m.named_buffers()):
            if name.startswith("coverage_"):
                covered = np.zeros(v, dtype=np.uint8)
                covered[torch.randperm(v, generator=g)[: m.stage_rows[int(name.split("_")[1])]].numpy()] = 1
                t.copy_(torch.from_numpy(np.packbits(covered, bitorder="little")))
            elif t.dtype == torch.uint8:
                t.copy_(torch.randint(0, 256, t.shape, generator=g, dtype=torch.uint8))
            elif t.dtype == torch.int8:
                t.copy_(torch.randint(-127, 128, t.shape, generator=g, dtype=torch.int8))
            else:
                t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))
    return m


def reference_matrix(m: LightTokenEmbedding) -> torch.Tensor:
    """The documented reconstruction, computed independently in float64 from the stored tensors.

    row i = lowrank_left[i] @ lowrank_right + sum_s [stage s covers i] (b_s(i) @ W_s + c_s), with b_s
    the stage's little-endian packed bits mapped to {-1, +1} and W_s = qweight * scale[:, None] for int8
    decoders; the padding row is stored exactly.
    """
    state = m.state_dict()
    v = m.num_embeddings
    out = state["lowrank_left"].double() @ state["lowrank_right"].double()
    for s, (bits, rows) in enumerate(zip(m.stage_bits, m.stage_rows, strict=True)):
        codes = state[f"codes_{s}"]
        assert codes.shape == (rows, (bits + 7) // 8)
        b01 = np.unpackbits(codes.numpy(), axis=1, bitorder="little")[:, :bits]
        signs = torch.from_numpy(b01).double() * 2 - 1
        if f"decoder_{s}_qweight" in state:
            assert state[f"decoder_{s}_qweight"].dtype == torch.int8 and f"decoder_{s}_weight" not in state
            weight = state[f"decoder_{s}_qweight"].double() * state[f"decoder_{s}_scale"].double().unsqueeze(1)
        else:
            weight = state[f"decoder_{s}_weight"].double()
        decoded = signs @ weight + state[f"decoder_{s}_bias"].double()
        if f"coverage_{s}" in state:  # covered ids in id order: row = number of covered ids below
            covered = torch.from_numpy(
                np.unpackbits(state[f"coverage_{s}"].numpy(), bitorder="little")[:v].astype(bool)
            )
            assert int(covered.sum()) == rows
            out[covered] += decoded
        else:  # a stage over every row
            assert rows == v
            out += decoded
    if m.padding_idx is not None:
        out[m.padding_idx] = state["padding_row"].double()
    return out


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_weight_matches_documented_reconstruction(layout):
    m = random_embedding(layout)
    w = m.weight
    assert w.shape == (m.num_embeddings, m.embedding_dim)
    assert w.dtype == torch.float32
    close(w.double(), reference_matrix(m))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@given(
    shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    seed=st.integers(0, 2**31 - 1),
    id_dtype=st.sampled_from([torch.int64, torch.int32]),
)
def test_forward_is_a_gather_from_weight(layout, shape, seed, id_dtype):
    m = random_embedding(layout)
    ids = torch.randint(0, m.num_embeddings, tuple(shape), generator=torch.Generator().manual_seed(seed))
    ids = ids.to(id_dtype)
    out = m(ids)
    assert out.shape == (*shape, m.embedding_dim)
    assert out.dtype == torch.float32
    w = m.weight
    close(out, w[ids.long()])
    close(out, F.embedding(ids, w))
    close(out, F.embedding(ids, w, padding_idx=m.padding_idx))


@pytest.mark.parametrize("layout", ["tiers_padding", "negative_padding"])
def test_padding_row_is_exact(layout):
    m = random_embedding(layout)
    pad = m.padding_idx
    assert 0 <= pad < m.num_embeddings
    stored = m.state_dict()["padding_row"].float()
    assert torch.equal(m(torch.tensor([pad, pad]))[1], stored)
    assert torch.equal(m.weight[pad], stored)
    # other rows are decoded, not the padding row
    assert not torch.equal(m(torch.tensor([(pad + 1) % m.num_embeddings]))[0], stored)


def test_negative_padding_idx_counts_from_the_end():
    m = LightTokenEmbedding(30, 4, svd_rank=1, padding_idx=-1)
    assert m.padding_idx == 29


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_materialize_gives_the_same_output(layout, gen):
    m = random_embedding(layout)
    ids = torch.randint(0, m.num_embeddings, (3, 7), generator=gen)
    before = m(ids)
    assert m.materialize() is m
    after = m(ids)
    close(after, before)
    assert torch.equal(after, m.weight[ids])
    m.materialize(False)
    close(m(ids), before)


def test_training_mode_drops_the_cache_so_lookups_follow_updates_and_carry_gradients(gen):
    m = random_embedding("tiers_padding").eval().materialize()
    ids = torch.randint(0, m.num_embeddings, (6,), generator=gen)
    assert not m(ids).requires_grad  # the cache is an inference snapshot
    m.train()
    out = m(ids)
    assert out.requires_grad
    out.sum().backward()
    assert m.decoder_0_bias.grad is not None
    with torch.no_grad():
        m.decoder_0_bias.add_(1.0)
    m.eval()
    close(m(ids), m.decode_rows(ids))  # no stale rows after the update
    m.materialize().train(False)  # eval mode keeps a cache
    assert m._cache is not None


def test_materialized_cache_follows_dtype_casts(gen):
    m = random_embedding("tiers_padding").materialize()
    ids = torch.randint(0, m.num_embeddings, (5,), generator=gen)
    ref = m(ids)
    m.to(torch.bfloat16)
    assert m(ids).dtype == torch.bfloat16
    assert m.weight.dtype == torch.bfloat16
    torch.testing.assert_close(m(ids).float(), ref, rtol=1e-2, atol=5e-2)


@pytest.mark.parametrize("bad", [40, 41, 1000, -1, -40])
def test_out_of_range_ids_raise(bad):
    m = random_embedding("hashing_only")  # 40 rows
    with pytest.raises(IndexError, match=str(bad)) as err:
        m(torch.tensor([[0, 3], [bad, 5]]))
    assert "39" in str(err.value)  # the message tells the valid range


def test_out_of_range_raises_even_when_materialized():
    m = random_embedding("hashing_only").materialize()
    with pytest.raises(IndexError):
        m(torch.tensor([40]))
    with pytest.raises(IndexError):
        m(torch.tensor([-1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64, torch.bool], ids=str)
def test_non_integer_ids_raise(dtype):
    m = random_embedding("svd_only")
    with pytest.raises(TypeError, match="integer"):
        m(torch.zeros(2, 3, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64], ids=str)
def test_every_integer_id_dtype_is_looked_up_or_refused_clearly(dtype):
    # Integer ids of any dtype must give the right rows or a clear TypeError/ValueError. uint8 is
    # the dangerous one: as an index, torch treats a uint8 tensor as a boolean mask.
    m = random_embedding("tiers_padding")
    ids = torch.tensor([[1, 1, 3], [7, 1, 0]])
    expected = m.weight[ids]
    try:
        out = m(ids.to(dtype))
    except (TypeError, ValueError) as err:
        assert str(dtype).replace("torch.", "") in str(err)
        return
    close(out, expected)


def test_uint8_ids_select_rows_not_a_mask():
    # 3 rows and 3 uint8 ids [1, 1, 1]: as a mask this would select rows 0, 1, 2
    m = LightTokenEmbedding(3, 4, svd_rank=2)
    with torch.no_grad():
        m.lowrank_left.copy_(torch.arange(6.0).view(3, 2))
        m.lowrank_right.copy_(torch.ones(2, 4))
    ids = torch.tensor([1, 1, 1], dtype=torch.uint8)
    try:
        out = m(ids)
    except (TypeError, ValueError):
        return
    assert torch.equal(out, m.weight[[1, 1, 1]])


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_safetensors_round_trip(layout, tmp_path, gen):
    m = random_embedding(layout)
    path = tmp_path / "emb.safetensors"
    save_file(m.state_dict(), str(path))
    loaded = load_file(str(path))
    assert sum(t.numel() * t.element_size() for t in loaded.values()) == m.compressed_nbytes
    v, d, rank, bits, rows, padding_idx, row_index, decoder_dtype = LAYOUTS[layout]
    fresh = LightTokenEmbedding(
        v, d, svd_rank=rank, stage_bits=bits, stage_rows=rows, padding_idx=padding_idx, row_index=row_index,
        decoder_dtype=decoder_dtype,
    )  # fmt: skip
    fresh.load_state_dict(loaded)
    ids = torch.randint(0, v, (4, 9), generator=gen)
    assert torch.equal(fresh(ids), m(ids))
    assert torch.equal(fresh.weight, m.weight)


@pytest.mark.parametrize("layout", ["tiers_padding", "tiers_int8"])
def test_compressed_nbytes_counts_every_stored_tensor(layout):
    m = random_embedding(layout)
    v, d = m.num_embeddings, m.embedding_dim
    expected = (v + d) * 3 * 2  # factors, fp16
    expected += d * 2  # padding row
    for b, r in zip(m.stage_bits, m.stage_rows, strict=True):
        expected += r * ((b + 7) // 8) + d * 2  # codes, decoder bias
        # decoder weight: fp16, or int8 with an fp16 scale per code bit
        expected += b * d + b * 2 if layout == "tiers_int8" else b * d * 2
        if layout in ("tiers_padding", "tiers_int8") and r < v:
            expected += (v + 7) // 8  # the tier's coverage mask, 1 bit per token
    assert m.compressed_nbytes == expected
    assert m.dense_nbytes == v * d * 4
    assert m.compression_ratio == pytest.approx(v * d * 4 / expected)


def test_coverage_mask_that_disagrees_with_the_row_count_is_a_clear_error():
    m = random_embedding("tiers_padding")
    with torch.no_grad():
        m.coverage_1.fill_(255)  # every token (and the 6 padding bits past V = 50) marked; stage 1 stores 20
    with pytest.raises(ValueError, match="coverage_1 marks 56 tokens but stage 1 stores codes for 20 of 50"):
        m(torch.tensor([1, 2]))
    past_v = np.zeros(56, dtype=np.uint8)
    past_v[:19] = 1
    past_v[55] = 1  # 20 bits, the right count, but one of them is past the last token
    with torch.no_grad():
        m.coverage_1.copy_(torch.from_numpy(np.packbits(past_v, bitorder="little")))
    with pytest.raises(ValueError, match="coverage_1 marks 20 tokens but stage 1 stores codes for 20 of 50"):
        m(torch.tensor([1, 2]))


def test_unknown_row_index_is_a_clear_error():
    with pytest.raises(ValueError, match="row_index must be one of"):
        LightTokenEmbedding(10, 2, stage_bits=[8], stage_rows=[5], row_index="ranks")


def test_coverage_positions_follow_a_reloaded_mask():
    """The cached id -> row map is rebuilt when the mask changes (load_state_dict after a lookup)."""
    a, b = random_embedding("tiers_padding", seed=0), random_embedding("tiers_padding", seed=1)
    ids = torch.arange(50)
    a(ids)  # builds the cache from a's masks
    a.load_state_dict(b.state_dict())
    assert torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("target", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_dtype_cast_changes_output_not_storage(target, gen):
    m = random_embedding("tiers_padding")
    before = {k: t.clone() for k, t in m.state_dict().items()}
    nbytes = m.compressed_nbytes
    ids = torch.randint(0, m.num_embeddings, (2, 5), generator=gen)
    ref = m(ids)
    m.to(target)
    out = m(ids)
    assert out.dtype == target
    assert m.weight.dtype == target
    after = m.state_dict()
    assert after.keys() == before.keys()
    for k, t in before.items():
        assert after[k].dtype == t.dtype, k
        assert torch.equal(after[k], t), k
    assert m.compressed_nbytes == nbytes
    torch.testing.assert_close(out.double(), ref.double(), rtol=1e-2, atol=5e-2)
    # casting back restores exactly the original outputs: nothing was lost in storage
    m.float()
    assert torch.equal(m(ids), ref)


def test_half_and_bfloat16_methods():
    m = random_embedding("svd_only")
    assert m.half()(torch.tensor([1])).dtype == torch.float16
    assert m.bfloat16()(torch.tensor([1])).dtype == torch.bfloat16
    assert m.state_dict()["lowrank_left"].dtype == torch.float16


def test_fp32_factor_storage():
    m = random_embedding("tiers_padding", factor_dtype=torch.float32)
    assert m.state_dict()["lowrank_left"].dtype == torch.float32
    close(m.weight.double(), reference_matrix(m))


def test_gradients_reach_the_stored_factors():
    # fine-tuning through the compressed embedding is possible (factors and decoders are parameters)
    m = random_embedding("tiers_padding", factor_dtype=torch.float32)
    m(torch.tensor([[1, 2, 3]])).sum().backward()
    assert m.lowrank_left.grad is not None and m.lowrank_left.grad.abs().sum() > 0
    assert m.decoder_0_weight.grad is not None


@pytest.mark.parametrize("layout", ["tiers_padding", "tiers_int8"])
def test_repeated_ids_give_the_gradients_of_a_dense_gather(layout):
    # forward decodes each distinct id once and a tier only for the ids it covers; the gradients must
    # still be those of gathering every position from the full reconstruction
    m = random_embedding(layout, factor_dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, m.num_embeddings, (6, 40), generator=g)
    ids[0, :5] = m.padding_idx
    upstream = torch.randn(6, 40, m.embedding_dim, generator=g)
    (m(ids) * upstream).sum().backward()
    lookup = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    (m.weight[ids] * upstream).sum().backward()
    for name, p in m.named_parameters():
        torch.testing.assert_close(lookup[name], p.grad, rtol=1e-5, atol=1e-4, msg=name)
    tier = len(m.stage_bits) - 1
    trained = f"decoder_{tier}_scale" if m.int8_decoders else f"decoder_{tier}_weight"
    assert lookup[trained].abs().sum() > 0  # the smallest tier still learns


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stage_bits": [0]},
        {"stage_bits": [8, -1]},
        {"stage_bits": [8], "stage_rows": [0]},
        {"stage_bits": [8], "stage_rows": [11]},
        {"stage_bits": [8, 8], "stage_rows": [10]},
    ],
)
def test_constructor_rejects_bad_shapes(kwargs):
    with pytest.raises(ValueError):
        LightTokenEmbedding(10, 4, **kwargs)


@pytest.mark.parametrize(("v", "d"), [(0, 4), (4, 0), (-1, 4)])
def test_constructor_rejects_empty(v, d):
    with pytest.raises(ValueError, match="positive"):
        LightTokenEmbedding(v, d, svd_rank=0)


def test_set_decoder_rounds_to_int8_with_a_scale_per_code_bit():
    m = LightTokenEmbedding(10, 6, stage_bits=[3], decoder_dtype=torch.int8)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 6, generator=g) * torch.tensor([[1.0], [1e-3], [50.0]])
    bias = torch.randn(6, generator=g)
    m.set_decoder(0, weight, bias)
    assert m.decoder_0_qweight.dtype == torch.int8 and m.decoder_0_qweight.abs().max() <= 127
    assert m.decoder_0_qweight.abs().amax(dim=1).tolist() == [127, 127, 127]  # each row uses the full range
    scale = m.decoder_0_scale.float().unsqueeze(1)
    # every entry within half a quantisation step of its row (plus the scale's own fp16 rounding)
    assert ((m.decoder_weight(0) - weight).abs() <= 0.5 * scale + 1e-3 * weight.abs()).all()
    torch.testing.assert_close(m.decoder_0_bias.float(), bias, rtol=1e-3, atol=1e-3)
    close(m.weight, (unpack_signs(m, 0) @ m.decoder_weight(0) + m.decoder_0_bias.float()))


def unpack_signs(m: LightTokenEmbedding, s: int) -> torch.Tensor:
    codes = getattr(m, f"codes_{s}")
    bits01 = np.unpackbits(codes.numpy(), axis=1, bitorder="little")[:, : m.stage_bits[s]]
    return torch.from_numpy(bits01).float() * 2 - 1


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.bool])
def test_unsupported_decoder_dtype_is_a_clear_error(dtype):
    with pytest.raises(ValueError, match="decoder_dtype must be a float dtype or torch.int8"):
        LightTokenEmbedding(10, 6, stage_bits=[3], decoder_dtype=dtype)
