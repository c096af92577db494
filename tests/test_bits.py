"""Bit packing: pack_bits / unpack_bits round-trip, exact sizes and the documented bit order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lighttoken_hf import pack_bits, unpack_bits


@st.composite
def bit_matrices(draw, min_rows: int = 0, max_rows: int = 40, max_bits: int = 70) -> np.ndarray:
    rows = draw(st.integers(min_rows, max_rows))
    bits = draw(st.integers(1, max_bits))
    return draw(arrays(np.uint8, (rows, bits), elements=st.integers(0, 1)))


@given(bit_matrices())
def test_round_trip(bits_np):
    # includes 0 rows and widths that are not a multiple of 8 (down to 1 bit)
    bits = torch.from_numpy(bits_np)
    n, b = bits.shape
    packed = pack_bits(bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (n, (b + 7) // 8)
    unpacked = unpack_bits(packed, b)
    assert unpacked.dtype == torch.uint8
    assert torch.equal(unpacked, bits)


@given(bit_matrices(min_rows=1))
def test_bool_input_round_trip(bits_np):
    bits = torch.from_numpy(bits_np).bool()
    assert torch.equal(unpack_bits(pack_bits(bits), bits.shape[1]).bool(), bits)


@given(bit_matrices(min_rows=1, max_rows=10))
def test_packed_size_is_ceil_bits_over_8_bytes_per_row(bits_np):
    n, b = bits_np.shape
    packed = pack_bits(torch.from_numpy(bits_np))
    assert packed.numel() * packed.element_size() == n * -(-b // 8)


@given(bit_matrices(min_rows=1))
def test_little_endian_bit_order_matches_numpy(bits_np):
    # The storage format is documented as little-endian inside a byte: numpy's packbits is an
    # independent implementation of exactly that layout (it also zero-pads the last byte).
    expected = np.packbits(bits_np, axis=1, bitorder="little")
    packed = pack_bits(torch.from_numpy(bits_np)).numpy()
    assert np.array_equal(packed, expected.reshape(bits_np.shape[0], -1))


@pytest.mark.parametrize("num_bits", [1, 7, 8, 9, 16, 17])
def test_single_bit_positions(num_bits):
    # one row per bit position: row j has only bit j set -> byte j // 8 holds 1 << (j % 8)
    bits = torch.eye(num_bits, dtype=torch.uint8)
    packed = pack_bits(bits)
    for j in range(num_bits):
        expected = torch.zeros((num_bits + 7) // 8, dtype=torch.uint8)
        expected[j // 8] = 1 << (j % 8)
        assert torch.equal(packed[j], expected)
    assert torch.equal(unpack_bits(packed, num_bits), bits)


def test_zero_rows():
    # a stage may cover no rows of a batch; (0, B) must pack to (0, ceil(B / 8)) and back
    for b in (1, 8, 13):
        packed = pack_bits(torch.zeros(0, b, dtype=torch.uint8))
        assert packed.shape == (0, (b + 7) // 8)
        assert unpack_bits(packed, b).shape == (0, b)


@given(
    st.lists(st.integers(0, 5), min_size=0, max_size=3),
    st.integers(1, 30),
    st.integers(0, 2**31 - 1),
)
def test_unpack_any_leading_shape(lead, num_bits, seed):
    # unpack_bits works on (..., nbytes): unpacking a gathered batch of any shape equals unpacking rows
    g = torch.Generator().manual_seed(seed)
    nbytes = (num_bits + 7) // 8
    packed = torch.randint(0, 256, (*lead, nbytes), generator=g, dtype=torch.uint8)
    out = unpack_bits(packed, num_bits)
    assert out.shape == (*lead, num_bits)
    flat = unpack_bits(packed.reshape(-1, nbytes), num_bits)
    assert torch.equal(out.reshape(-1, num_bits), flat)
    expected = np.unpackbits(packed.reshape(-1, nbytes).numpy(), axis=1, bitorder="little")[:, :num_bits]
    assert np.array_equal(flat.numpy(), expected)


def test_unpack_ignores_padding_bits():
    # bits past num_bits in the last byte are padding: they must not leak into the result
    packed = torch.tensor([[0b1111_1101]], dtype=torch.uint8)
    assert unpack_bits(packed, 3).tolist() == [[1, 0, 1]]


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_pack_rejects_non_2d(shape):
    with pytest.raises(ValueError, match="2-D"):
        pack_bits(torch.zeros(shape, dtype=torch.uint8))
