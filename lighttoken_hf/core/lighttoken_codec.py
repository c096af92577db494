"""Decode side of LightToken: bit packing and the compressed embedding module.

This file ships with every compressed checkpoint as remote code. It imports only torch and
must stay small enough to audit in one sitting: it never trains and never reads pickles.

Storage layout of a :class:`LightTokenEmbedding` (all tensors are buffers or parameters, so
they round-trip through ``state_dict`` / safetensors):

* ``lowrank_left`` (V x k) and ``lowrank_right`` (k x d): the rank-k SVD part ``U_k S_k @ V_k^T``,
  stored in ``factor_dtype`` (fp16 by default). ``k`` may be 0.
* ``padding_row`` (d,): the padding token's row, stored exactly, when ``padding_idx`` is set.
* ``coverage_{s}`` (ceil(V / 8),) uint8, only for a stage that covers fewer than V rows (a frequency
  tier): which tokens the stage stores codes for, one bit per token id, packed like the codes. Its
  ``stage_rows[s]`` covered tokens are stored in id order, so token ``i``'s row in ``codes_{s}`` is
  the number of covered ids below ``i`` (from a per-byte prefix count computed on first use and
  cached in memory, 4 bytes per 8 tokens; never stored).
* ``codes_{s}`` (stage_rows[s] x ceil(B_s / 8)) uint8: stage ``s``'s binary codes, bit-packed
  (1 bit per code bit, little-endian bit order inside a byte).
* ``decoder_{s}_weight`` (B_s x d) and ``decoder_{s}_bias`` (d,): stage ``s``'s linear decoder,
  applied to the code mapped to {-1, +1}, stored in ``factor_dtype``. With ``decoder_dtype=torch.int8``
  the weight is stored instead as ``decoder_{s}_qweight`` (B_s x d, int8) and ``decoder_{s}_scale``
  (B_s,) in ``factor_dtype``: ``W_s = qweight * scale[:, None]`` (symmetric, one scale per code bit).

A row is rebuilt as ``lowrank_left[i] @ lowrank_right + sum_s [stage s covers i] * (b_s(i) @ W_s + c_s)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

_BIT_WEIGHTS = tuple(1 << i for i in range(8))
_POPCOUNT = tuple(bin(byte).count("1") for byte in range(256))


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """Pack a (N, B) tensor of {0, 1} (or bool) into (N, ceil(B / 8)) uint8, little-endian per byte."""
    if bits.dim() != 2:
        raise ValueError(f"pack_bits expects a 2-D (rows x bits) tensor, got shape {tuple(bits.shape)}")
    n, b = bits.shape
    padded = torch.zeros(n, (b + 7) // 8 * 8, dtype=torch.uint8, device=bits.device)
    padded[:, :b] = bits.to(torch.uint8)
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=bits.device)
    return (padded.view(n, (b + 7) // 8, 8) * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (..., ceil(B / 8)) uint8 -> (..., num_bits) uint8 of {0, 1}."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) & weights).ne(0)
    return bits.flatten(-2)[..., :num_bits].to(torch.uint8)


class LightTokenEmbedding(nn.Module):
    """Drop-in replacement for :class:`torch.nn.Embedding` backed by LightToken codes.

    ``forward(input_ids)`` returns the same shape and dtype an ``nn.Embedding`` would, decoding only
    the looked-up rows, so memory stays about 1/ratio of the dense matrix. Call
    :meth:`materialize` to cache the dense matrix for faster lookups at the cost of memory.
    ``weight`` returns the reconstructed matrix for code that needs it (e.g. tied output layers).

    Args:
        num_embeddings: vocabulary size V.
        embedding_dim: embedding width d.
        svd_rank: rank k of the low-rank part (0 disables it).
        stage_bits: code bits B_s of each hashing stage.
        stage_rows: rows covered by each stage (the ``stage_rows[s]`` most frequent tokens);
            ``None`` means every stage covers all V rows.
        padding_idx: like ``nn.Embedding``: that row is stored exactly (``padding_row``).
        factor_dtype: storage dtype of the low-rank factors, the decoder biases (and scales) and the
            padding row.
        decoder_dtype: storage dtype of the decoder weights: ``torch.int8`` (one ``factor_dtype`` scale per
            code bit) or a float dtype.
        dtype: dtype of the vectors returned by ``forward``.
        row_index: how a stage that covers fewer than V rows finds a token's row: ``"coverage"`` (a packed
            bit mask per such stage, 1 bit per token; the only layout so far, recorded in the config).
        output_scale: factor ``forward`` multiplies the looked-up rows by, for backbones whose
            embedding module scales its output (Gemma's ``sqrt(hidden_size)``); ``weight`` and a
            tied output layer use the unscaled matrix, as the original module's ``weight`` is.
    """

    ROW_INDEXES = ("coverage",)

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        svd_rank: int = 0,
        stage_bits: Sequence[int] = (),
        stage_rows: Sequence[int] | None = None,
        padding_idx: int | None = None,
        factor_dtype: torch.dtype = torch.float16,
        dtype: torch.dtype = torch.float32,
        row_index: str = "coverage",
        decoder_dtype: torch.dtype = torch.int8,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if row_index not in self.ROW_INDEXES:
            raise ValueError(f"row_index must be one of {self.ROW_INDEXES}, got {row_index!r}")
        if not (decoder_dtype.is_floating_point or decoder_dtype == torch.int8):
            raise ValueError(f"decoder_dtype must be a float dtype or torch.int8, got {decoder_dtype}")
        if num_embeddings <= 0 or embedding_dim <= 0:
            raise ValueError(
                f"num_embeddings and embedding_dim must be positive, got {num_embeddings}, {embedding_dim}"
            )
        stage_bits = [int(b) for b in stage_bits]
        if any(b <= 0 for b in stage_bits):
            raise ValueError(f"every hashing stage needs at least one code bit, got stage_bits={stage_bits}")
        if stage_rows is None:
            stage_rows = [num_embeddings] * len(stage_bits)
        stage_rows = [int(r) for r in stage_rows]
        if len(stage_rows) != len(stage_bits) or any(not 0 < r <= num_embeddings for r in stage_rows):
            raise ValueError(
                f"stage_rows must give 1..{num_embeddings} rows for each of the {len(stage_bits)} stages, "
                f"got {stage_rows}"
            )
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx
        self.svd_rank = int(svd_rank)
        self.stage_bits = stage_bits
        self.stage_rows = stage_rows
        self.output_dtype = dtype
        self.output_scale = float(output_scale)
        self.decoder_dtype = decoder_dtype
        self.int8_decoders = decoder_dtype == torch.int8
        self.lowrank_left = nn.Parameter(torch.zeros(num_embeddings, self.svd_rank, dtype=factor_dtype))
        self.lowrank_right = nn.Parameter(torch.zeros(self.svd_rank, embedding_dim, dtype=factor_dtype))
        if padding_idx is not None:
            # The padding row is kept exactly (an nn.Embedding returns weight[padding_idx] there).
            self.register_buffer("padding_row", torch.zeros(embedding_dim, dtype=factor_dtype))
        self.row_index = row_index
        self._prefix: dict[int, tuple[tuple, tuple[torch.Tensor, torch.Tensor]]] = {}
        for s, (bits, rows) in enumerate(zip(stage_bits, stage_rows)):
            if rows < num_embeddings:  # until loaded: the first `rows` ids
                first = (torch.arange(num_embeddings) < rows).unsqueeze(0)
                self.register_buffer(f"coverage_{s}", pack_bits(first)[0])
            self.register_buffer(f"codes_{s}", torch.zeros(rows, (bits + 7) // 8, dtype=torch.uint8))
            if self.int8_decoders:  # fixed int8 directions; the per-bit scales stay trainable
                self.register_buffer(
                    f"decoder_{s}_qweight", torch.zeros(bits, embedding_dim, dtype=torch.int8)
                )
                self.register_parameter(
                    f"decoder_{s}_scale", nn.Parameter(torch.zeros(bits, dtype=factor_dtype))
                )
            else:
                self.register_parameter(
                    f"decoder_{s}_weight", nn.Parameter(torch.zeros(bits, embedding_dim, dtype=decoder_dtype))
                )
            self.register_parameter(
                f"decoder_{s}_bias", nn.Parameter(torch.zeros(embedding_dim, dtype=factor_dtype))
            )
        self._cache: torch.Tensor | None = None
        self._signs: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 - torch's own signature
        """Follow ``.to(device)`` moves; a dtype cast changes only the output dtype, never the storage."""
        probe = fn(torch.zeros(1, dtype=self.output_dtype, device=self.lowrank_right.device))
        if probe.is_floating_point():
            self.output_dtype = probe.dtype
        had_cache, self._cache = self._cache is not None, None
        out = super()._apply(lambda t: t.to(probe.device), recurse)
        return self.materialize() if had_cache else out

    # ------------------------------------------------------------------ accounting
    @property
    def compressed_nbytes(self) -> int:
        """Bytes of everything needed to rebuild the matrix (codes, factors, decoders, row index)."""
        return sum(t.numel() * t.element_size() for t in self._stored_tensors())

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the uncompressed fp32 V x d matrix."""
        return self.num_embeddings * self.embedding_dim * 4

    @property
    def compression_ratio(self) -> float:
        """``dense_nbytes / compressed_nbytes``."""
        return self.dense_nbytes / self.compressed_nbytes

    def layout(self) -> dict:
        """The shapes and storage choices this module was built with (what ``config.json`` records)."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "svd_rank": self.svd_rank,
            "stage_bits": list(self.stage_bits),
            "stage_rows": list(self.stage_rows),
            "padding_idx": self.padding_idx,
            "factor_dtype": str(self.lowrank_right.dtype).removeprefix("torch."),
            "decoder_dtype": str(self.decoder_dtype).removeprefix("torch."),
            "row_index": self.row_index,
            "output_scale": self.output_scale,
        }

    def checksums(self) -> dict[str, str]:
        """A short SHA-256 of every stored tensor (state-dict name -> 16 hex digits) over its dtype, shape
        and bytes: saved in ``config.json`` and checked on load, so a corrupted or edited weights file is an
        error instead of silently wrong outputs."""
        sums = {}
        for name, tensor in sorted(self.state_dict().items()):
            digest = hashlib.sha256(f"{tensor.dtype}:{tuple(tensor.shape)}:".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
            sums[name] = digest.hexdigest()[:16]
        return sums

    def _stored_tensors(self) -> list[torch.Tensor]:
        return [t for _, t in self.named_parameters()] + [t for _, t in self.named_buffers()]

    # ------------------------------------------------------------------ decoding
    def decoder_weight(self, s: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Stage ``s``'s decoder weight (B_s x d) in ``dtype``, dequantized when stored as int8."""
        if self.int8_decoders:
            scale = getattr(self, f"decoder_{s}_scale").to(dtype)
            return getattr(self, f"decoder_{s}_qweight").to(dtype) * scale.unsqueeze(1)
        return getattr(self, f"decoder_{s}_weight").to(dtype)

    @torch.no_grad()
    def set_decoder(self, s: int, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Store stage ``s``'s decoder (``weight`` B_s x d, ``bias`` d), rounding it to the storage
        format: with int8 decoders each row gets the scale ``max|row| / 127`` (rounded to its storage
        dtype first, so the int8 values are exact for the stored scale)."""
        getattr(self, f"decoder_{s}_bias").copy_(bias)
        if not self.int8_decoders:
            getattr(self, f"decoder_{s}_weight").copy_(weight)
            return
        stored = getattr(self, f"decoder_{s}_scale")
        stored.copy_(weight.float().abs().amax(dim=1) / 127)
        scale = stored.float().clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
        quantized = (weight.float() / scale).round().clamp(-127, 127)
        getattr(self, f"decoder_{s}_qweight").copy_(quantized.to(torch.int8))

    def stage_index(self, s: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inside, row)`` for token ``ids`` in stage ``s``: whether the stage covers each id, and its
        row in ``codes_{s}`` (clamped into range where the stage skips the id)."""
        rows = self.stage_rows[s]
        if rows == self.num_embeddings:
            return torch.ones_like(ids, dtype=torch.bool), ids
        mask = getattr(self, f"coverage_{s}")
        byte, offset = mask.index_select(0, ids >> 3).long(), ids & 7
        inside = (byte >> offset) & 1 == 1
        # row = covered ids in earlier bytes (cached prefix count) + covered ids below `id` in its byte
        below = byte & ((1 << offset) - 1)
        prefix, popcount = self.coverage_prefix(s)
        row = prefix.index_select(0, ids >> 3) + popcount.index_select(0, below)
        return inside, row.clamp(max=rows - 1)

    def coverage_prefix(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Covered ids in the bytes before each byte of ``coverage_{s}`` (int32, V / 8 entries) and the
        per-byte popcount table, cached per mask version: the id -> row map costs 4 bytes per 8 tokens
        of memory and nothing on disk."""
        mask = getattr(self, f"coverage_{s}")
        key = (mask.data_ptr(), mask._version, mask.device)
        cached = self._prefix.get(s)
        if cached is not None and cached[0] == key:
            return cached[1]
        popcount = torch.tensor(_POPCOUNT, dtype=torch.int32, device=mask.device)
        counts = popcount[mask.long()]
        valid = (mask[-1].long() >> (self.num_embeddings - 8 * (mask.numel() - 1))) == 0  # no bit past V
        if int(counts.sum()) != self.stage_rows[s] or not valid:
            raise ValueError(
                f"coverage_{s} marks {int(counts.sum())} tokens but stage {s} stores codes for "
                f"{self.stage_rows[s]} of {self.num_embeddings}: the checkpoint's tensors do not match its config"
            )
        prefix = torch.cumsum(counts, 0, dtype=torch.int32) - counts
        self._prefix[s] = (key, (prefix, popcount))
        return prefix, popcount

    def decode_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rebuild the rows ``ids`` (1-D int tensor) as an (N, d) tensor of ``output_dtype``.

        Each distinct id is decoded once (text repeats its frequent tokens), and a frequency tier's
        codes are decoded only for the ids it covers."""
        unique, inverse = torch.unique(ids, return_inverse=True)
        return self._decode_unique(unique).index_select(0, inverse)

    def sign_table(self, compute: torch.dtype, device: torch.device) -> torch.Tensor:
        """(256, 8) table of each byte's 8 code bits as -1/+1 (little-endian), cached per dtype/device."""
        key = (compute, device)
        if key not in self._signs:
            bits = unpack_bits(torch.arange(256, dtype=torch.uint8, device=device).unsqueeze(1), 8)
            self._signs[key] = bits.to(compute) * 2 - 1
        return self._signs[key]

    def _decode_unique(self, ids: torch.Tensor) -> torch.Tensor:
        """:meth:`decode_rows` for ids without repeats (or where repeats are rare)."""
        dtype = self.output_dtype if self.output_dtype.is_floating_point else torch.float32
        compute = (
            torch.float32 if dtype in (torch.float16, torch.bfloat16) and ids.device.type == "cpu" else dtype
        )
        table = self.sign_table(compute, ids.device)
        out = torch.zeros(ids.shape[0], self.embedding_dim, dtype=compute, device=ids.device)
        full_signs, full_weights, tiers = [], [], []
        for s, bits in enumerate(self.stage_bits):
            inside, row = self.stage_index(s, ids)
            where = None
            if self.stage_rows[s] < self.num_embeddings:  # a frequency tier: only the ids it covers
                where = inside.nonzero().squeeze(1)
                if where.numel() == 0:
                    continue
                row = row[where]
            codes, bias = getattr(self, f"codes_{s}"), getattr(self, f"decoder_{s}_bias")
            weight = self.decoder_weight(s, compute)
            signs = nn.functional.embedding(codes.index_select(0, row).long(), table).flatten(1)[:, :bits]
            if where is None:  # every stage that covers all ids joins one matmul
                full_signs.append(signs)
                full_weights.append(weight)
                out += bias.to(compute)
            else:
                tiers.append((where, signs, weight, bias.to(compute)))
        if full_signs:
            out += torch.cat(full_signs, dim=1) @ torch.cat(full_weights, dim=0)
        if self.svd_rank:
            out += self.lowrank_left.index_select(0, ids).to(compute) @ self.lowrank_right.to(compute)
        for where, signs, weight, bias in tiers:
            out.index_add_(0, where, signs @ weight + bias)
        if self.padding_idx is not None:
            out[ids == self.padding_idx] = self.padding_row.to(compute)
        return out.to(dtype)

    def code_signs(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(len(ids), sum B_s + S) matrix ``A`` of the tokens ``ids``: each stage's code signs (+-1, 0
        where the stage skips the token) followed by one coverage flag (1/0) per stage, so that the
        decoded rows are ``A @ [decoder weights; decoder biases]`` plus the low-rank part."""
        table = self.sign_table(dtype, ids.device)
        cols, inside = [], []
        for s, bits in enumerate(self.stage_bits):
            covered, row = self.stage_index(s, ids)
            inside.append(covered.unsqueeze(1).to(dtype))
            codes = getattr(self, f"codes_{s}").index_select(0, row).long()
            cols.append(nn.functional.embedding(codes, table).flatten(1)[:, :bits] * inside[s])
        return torch.cat(cols + inside, dim=1)

    def materialize(self, enable: bool = True) -> LightTokenEmbedding:
        """Cache (or drop, with ``enable=False``) the dense reconstructed matrix for faster lookups.

        The cache is an inference snapshot without gradients: ``train()`` drops it (lookups then decode
        again, with gradients, and see every parameter update); after changing the parameters in eval
        mode, call ``materialize()`` again.
        """
        self._cache = None
        if enable:
            with torch.no_grad():
                self._cache = self._decode_all()
        return self

    def train(self, mode: bool = True) -> LightTokenEmbedding:
        """``nn.Module.train``; training mode drops a :meth:`materialize` cache (it would go stale)."""
        if mode:
            self._cache = None
        return super().train(mode)

    def _decode_all(self) -> torch.Tensor:
        device, total = self.lowrank_left.device, self.num_embeddings
        # about 1 Mi values of signs per block: 8,192 rows of a 2,000-bit (8x) code would be 16x that
        step = max(256, (1 << 20) // (sum(self.stage_bits) + self.embedding_dim))
        first = self._decode_unique(torch.arange(min(step, total), device=device))
        out = first.new_empty(total, self.embedding_dim)  # filled in place: no concatenated second copy
        out[: first.shape[0]] = first
        for start in range(first.shape[0], total, step):
            stop = min(total, start + step)
            out[start:stop] = self._decode_unique(torch.arange(start, stop, device=device))
        return out

    @property
    def weight(self) -> torch.Tensor:
        """The reconstructed V x d matrix (decoded on every access unless :meth:`materialize` was called)."""
        return self._cache if self._cache is not None else self._decode_all()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Look up ``input_ids`` (any shape, integer dtype) -> ``input_ids.shape + (d,)``."""
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"LightTokenEmbedding expects integer token ids, got dtype {input_ids.dtype}")
        flat = input_ids.reshape(-1).long()  # uint8 ids would otherwise index as a boolean mask
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            bad = flat[(flat < 0) | (flat >= self.num_embeddings)][0].item()
            raise IndexError(
                f"token id {bad} is out of range for a LightTokenEmbedding with {self.num_embeddings} rows "
                "(valid ids: 0..{}); check that the tokenizer matches the model".format(
                    self.num_embeddings - 1
                )
            )
        rows = self._cache[flat] if self._cache is not None else self.decode_rows(flat)
        if self.output_scale != 1.0:
            rows = rows * torch.tensor(self.output_scale, dtype=rows.dtype, device=rows.device)
        return rows.view(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, svd_rank={self.svd_rank}, stage_bits={self.stage_bits}, "
            f"stage_rows={self.stage_rows}, padding_idx={self.padding_idx}, row_index={self.row_index}, "
            f"decoder_dtype={str(self.decoder_dtype).removeprefix('torch.')}, "
            + (f"output_scale={self.output_scale:g}, " if self.output_scale != 1.0 else "")
            + f"ratio={self.compression_ratio:.1f}x"
        )
