"""Practical alternatives to LightToken for shrinking a token-embedding matrix, with honest byte counts.

Every baseline is a function ``(E, **params) -> BaselineResult`` taking the dense fp32 V x d matrix E.
``BaselineResult.nbytes`` counts the real bytes of everything needed to rebuild the matrix, at the dtype
it is stored in:

* ``truncated_svd``: ``U_k S_k`` (V x k) and ``V_k^T`` (k x d), both fp16.
* ``quantize_rows``: codes bit-packed at their bit width (2 codes per byte for int4, 4 for int2), plus
  one scale and one zero point per group of ``group_size`` values of a row (``group_size=None``: one
  group per row). Backend: torchao's affine quantization primitives (``choose_qparams_affine`` /
  ``quantize_affine`` with ``MappingType.ASYMMETRIC``, ``block_size=(1, group_size)``, unsigned codes
  ``0..2^b-1``, fp16 scale and a uint8 integer zero point: 3 bytes per group); the decode is
  ``(q - zero_point) * scale``. When torchao is not installed, an own implementation with the same
  layout is used instead (plain min/max asymmetric: ``q = round((x - min) / scale)``, fp16 scale and
  fp16 zero = min: 4 bytes per group, decode ``q * scale + min``). ``params["backend"]`` says which ran.
* ``product_quantization``: faiss ``ProductQuantizer`` codes (``ceil(M * nbits / 8)`` bytes per row, as
  faiss packs them) plus the fp32 codebooks (``2^nbits * d`` floats), trained on E itself with a fixed
  seed.

``seconds`` is the wall time of the encoding (fitting and producing the stored tensors); rebuilding the
dense matrix afterwards is not included. Each result also carries ``decoder``, a small ``nn.Module``
that decodes rows ``ids -> ids.shape + (d,)`` from the stored form only (no dense copy), so lookups
can be timed for real.
"""

from __future__ import annotations

import importlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "BaselineResult",
    "import_backends",
    "PQDecoder",
    "QuantizedRowsDecoder",
    "SVDDecoder",
    "pack_codes",
    "pq_config_for_ratio",
    "pq_nbytes",
    "product_quantization",
    "quant_nbytes",
    "quantize_rows",
    "svd_nbytes",
    "svd_rank_for_ratio",
    "truncated_svd",
    "unpack_codes",
]


@dataclass
class BaselineResult:
    """What a baseline produced.

    Attributes:
        name: method name, e.g. ``"svd-fp16"``, ``"int4-g32"``, ``"pq"``.
        params: the settings used (rank, bits, group size, M, nbits, backend...).
        reconstructed: the rebuilt V x d fp32 matrix.
        nbytes: real bytes of everything needed to rebuild the matrix, at their stored dtypes.
        seconds: wall time of the encoding.
        decoder: module decoding rows from the stored form (``None`` if the method has none).
    """

    name: str
    params: dict[str, Any]
    reconstructed: Tensor
    nbytes: int
    seconds: float
    decoder: nn.Module | None = field(default=None, repr=False)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the uncompressed fp32 matrix."""
        return self.reconstructed.numel() * 4

    @property
    def ratio(self) -> float:
        """``V * d * 4 / nbytes``."""
        return self.dense_nbytes / self.nbytes


def _check_matrix(e: Tensor) -> Tensor:
    if e.dim() != 2:
        raise ValueError(f"expected a V x d matrix, got shape {tuple(e.shape)}")
    return e.detach().float().contiguous()


# --------------------------------------------------------------------------------------- truncated SVD
class SVDDecoder(nn.Module):
    """Row lookup for the fp16 low-rank factors: ``left[ids] @ right`` in fp32."""

    def __init__(self, left: Tensor, right: Tensor) -> None:
        super().__init__()
        self.register_buffer("left", left)
        self.register_buffer("right", right)

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        rows = self.left[flat].float() @ self.right.float()
        return rows.view(*ids.shape, self.right.shape[1])


def svd_nbytes(vocab: int, dim: int, rank: int, bytes_per_value: int = 2) -> int:
    """Bytes of rank-``rank`` factors (V x k and k x d) stored at ``bytes_per_value`` bytes each."""
    return rank * (vocab + dim) * bytes_per_value


def svd_rank_for_ratio(vocab: int, dim: int, ratio: float, bytes_per_value: int = 2) -> int:
    """Largest rank k whose fp16 factors give ``V * d * 4 / nbytes >= ratio`` (0 when even k = 1 does not)."""
    if ratio <= 0:
        raise ValueError(f"ratio must be positive, got {ratio}")
    dense = vocab * dim * 4
    rank = min(vocab, dim, int(dense / (ratio * (vocab + dim) * bytes_per_value)) + 1)
    while rank > 0 and dense / svd_nbytes(vocab, dim, rank, bytes_per_value) < ratio:
        rank -= 1
    return rank


def truncated_svd(e: Tensor, *, rank: int) -> BaselineResult:
    """Best rank-``rank`` approximation (Eckart-Young) with fp16 factors ``U_k S_k`` and ``V_k^T``.

    The right singular vectors come from an fp64 eigendecomposition of the d x d Gram matrix ``E^T E``
    (exact and cheap for any vocabulary size since d << V); the left factor is ``E V_k``.
    """
    e = _check_matrix(e)
    vocab, dim = e.shape
    if not 1 <= rank <= min(vocab, dim):
        raise ValueError(f"rank must be in 1..{min(vocab, dim)}, got {rank}")
    start = time.perf_counter()
    e64 = e.double()
    _, eigenvectors = torch.linalg.eigh(e64.T @ e64)
    right64 = eigenvectors[:, -rank:].flip(1)  # d x k, largest singular values first
    left = (e64 @ right64).to(torch.float16).contiguous()  # = U_k S_k
    right = right64.T.to(torch.float16).contiguous()  # k x d
    seconds = time.perf_counter() - start
    decoder = SVDDecoder(left, right)
    reconstructed = left.float() @ right.float()
    return BaselineResult(
        name="svd-fp16",
        params={"rank": rank, "factor_dtype": "float16"},
        reconstructed=reconstructed,
        nbytes=left.numel() * left.element_size() + right.numel() * right.element_size(),
        seconds=seconds,
        decoder=decoder,
    )


# --------------------------------------------------------------------------------------- scalar quantization
def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """Pack (N, D) unsigned codes < 2**bits into (N, ceil(D * bits / 8)) uint8, lowest bits first."""
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8, got {bits}")
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.contiguous()
    per_byte = 8 // bits
    n, d = codes.shape
    padded = torch.zeros(n, math.ceil(d / per_byte) * per_byte, dtype=torch.uint8)
    padded[:, :d] = codes
    grouped = padded.view(n, -1, per_byte)
    packed = torch.zeros(n, grouped.shape[1], dtype=torch.uint8)
    for i in range(per_byte):
        packed |= grouped[:, :, i] << (i * bits)
    return packed


def unpack_codes(packed: Tensor, bits: int, dim: int) -> Tensor:
    """Inverse of :func:`pack_codes`: (N, B) uint8 -> (N, dim) uint8 codes."""
    if bits == 8:
        return packed[:, :dim]
    per_byte = 8 // bits
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8)
    codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(packed.shape[0], packed.shape[1] * per_byte)[:, :dim]


def quant_nbytes(vocab: int, dim: int, bits: int, group_size: int | None, bytes_per_group: int = 3) -> int:
    """Bytes of bit-packed codes plus ``bytes_per_group`` (scale + zero point) per group."""
    group = dim if group_size is None else group_size
    return vocab * math.ceil(dim * bits / 8) + vocab * (dim // group) * bytes_per_group


class QuantizedRowsDecoder(nn.Module):
    """Row lookup for group-wise affine codes: unpack the looked-up rows and dequantize them.

    ``zero_is_integer=True`` (torchao layout): ``x = (q - zero) * scale``.
    ``zero_is_integer=False`` (own layout): ``x = q * scale + zero``.
    """

    def __init__(
        self, packed: Tensor, scale: Tensor, zero: Tensor, *, bits: int, dim: int, zero_is_integer: bool
    ) -> None:
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scale", scale)
        self.register_buffer("zero", zero)
        self.bits = bits
        self.dim = dim
        self.zero_is_integer = zero_is_integer

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        groups = self.scale.shape[1]
        q = unpack_codes(self.packed[flat], self.bits, self.dim).float().view(flat.numel(), groups, -1)
        scale = self.scale[flat].float().unsqueeze(-1)
        zero = self.zero[flat].float().unsqueeze(-1)
        rows = (q - zero) * scale if self.zero_is_integer else q * scale + zero
        return rows.view(*ids.shape, self.dim)


def import_backends() -> dict[str, str | None]:
    """Import the optional backends (torchao, faiss) now, so later timings and memory exclude the import.

    Returns each backend's version, or ``None`` when it is not installed.
    """
    versions: dict[str, str | None] = {}
    for name in ("torchao", "faiss"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - a missing or broken optional backend
            versions[name] = None
    if versions["torchao"] is not None:
        _torchao_primitives()
    return versions


def _torchao_primitives():
    try:
        from torchao.quantization.quant_primitives import (
            MappingType,
            choose_qparams_affine,
            quantize_affine,
        )
    except Exception:  # noqa: BLE001 - any import failure means "use the own implementation"
        return None
    return MappingType, choose_qparams_affine, quantize_affine


def quantize_rows(
    e: Tensor, *, bits: int, group_size: int | None = None, backend: str = "auto"
) -> BaselineResult:
    """Asymmetric min/max quantization of each row (or each group of ``group_size`` values of a row).

    Args:
        e: the V x d fp32 matrix.
        bits: 8, 4 or 2.
        group_size: values sharing one scale and zero point; ``None`` means one group per row. Must
            divide d.
        backend: ``"torchao"``, ``"own"`` or ``"auto"`` (torchao when importable).
    """
    e = _check_matrix(e)
    vocab, dim = e.shape
    if bits not in (2, 4, 8):
        raise ValueError(f"bits must be 8, 4 or 2, got {bits}")
    group = dim if group_size is None else int(group_size)
    if group < 1 or dim % group:
        raise ValueError(f"group_size must divide the embedding width {dim}, got {group_size}")
    primitives = _torchao_primitives() if backend in ("auto", "torchao") else None
    if backend == "torchao" and primitives is None:
        raise ImportError("backend='torchao' needs `pip install torchao`")
    qmax = (1 << bits) - 1

    start = time.perf_counter()
    if primitives is not None:
        mapping_type, choose_qparams_affine, quantize_affine = primitives
        block = (1, group)
        scale, zero = choose_qparams_affine(
            e,
            mapping_type.ASYMMETRIC,
            block,
            torch.uint8,
            0,
            qmax,
            scale_dtype=torch.float16,
            zero_point_dtype=torch.uint8,
        )
        scale, zero = scale.reshape(vocab, -1), zero.reshape(vocab, -1)
        codes = quantize_affine(e, block, scale, zero, torch.uint8, 0, qmax)
        import torchao

        backend_used = f"torchao {torchao.__version__} quant_primitives (ASYMMETRIC, uint8 zero point)"
        zero_is_integer = True
    else:
        grouped = e.view(vocab, dim // group, group)
        low, high = grouped.amin(dim=2), grouped.amax(dim=2)
        scale = ((high - low) / qmax).to(torch.float16)
        zero = low.to(torch.float16)
        safe = scale.float().clamp_min(torch.finfo(torch.float16).tiny).unsqueeze(-1)
        codes = ((grouped - zero.float().unsqueeze(-1)) / safe).round_().clamp_(0, qmax).view(vocab, dim)
        backend_used = "own min/max (fp16 scale, fp16 zero)"
        zero_is_integer = False
    packed = pack_codes(codes.to(torch.uint8), bits)
    seconds = time.perf_counter() - start

    decoder = QuantizedRowsDecoder(packed, scale, zero, bits=bits, dim=dim, zero_is_integer=zero_is_integer)
    with torch.no_grad():
        reconstructed = torch.cat([decoder(chunk) for chunk in torch.arange(vocab).split(8192)])
    nbytes = sum(t.numel() * t.element_size() for t in (packed, scale, zero))
    return BaselineResult(
        name=f"int{bits}-" + ("row" if group_size is None or group == dim else f"g{group}"),
        params={
            "bits": bits,
            "group_size": group,
            "scale_dtype": str(scale.dtype).removeprefix("torch."),
            "zero_dtype": str(zero.dtype).removeprefix("torch."),
            "backend": backend_used,
        },
        reconstructed=reconstructed,
        nbytes=nbytes,
        seconds=seconds,
        decoder=decoder,
    )


# --------------------------------------------------------------------------------------- product quantization
def pq_nbytes(vocab: int, dim: int, m: int, nbits: int) -> int:
    """Codes (``ceil(M * nbits / 8)`` bytes per row) plus fp32 codebooks (``2^nbits * d`` floats)."""
    return vocab * math.ceil(m * nbits / 8) + (1 << nbits) * dim * 4


def pq_config_for_ratio(
    vocab: int, dim: int, ratio: float, nbits_choices: tuple[int, ...] = (4, 5, 6, 7, 8)
) -> tuple[int, int] | None:
    """(M, nbits) with M dividing d, meeting ``V * d * 4 / nbytes >= ratio`` with the most code bits per row.

    Ties in code bits go to the larger ``nbits`` (fewer, finer subquantizers). ``None`` when no
    configuration reaches the ratio. The default caps nbits at 8 (256 centroids per subspace) to keep
    k-means cheap.
    """
    dense = vocab * dim * 4
    best: tuple[int, int, int] | None = None
    for m in (m for m in range(1, dim + 1) if dim % m == 0):
        for nbits in nbits_choices:
            if dense / pq_nbytes(vocab, dim, m, nbits) >= ratio:
                key = (m * nbits, nbits, m)
                if best is None or key > best:
                    best = key
    return None if best is None else (best[2], best[1])


class PQDecoder(nn.Module):
    """Row lookup for product-quantized rows through faiss's own ``ProductQuantizer.decode``.

    Holds only the packed codes and the codebooks; the faiss object is rebuilt from the codebooks on
    first use (and after unpickling).
    """

    def __init__(self, codes: Tensor, centroids: Tensor, *, dim: int, m: int, nbits: int) -> None:
        super().__init__()
        self.register_buffer("codes", codes)
        self.register_buffer("centroids", centroids)
        self.dim, self.m, self.nbits = dim, m, nbits
        self._pq = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_pq"] = None
        return state

    def _quantizer(self):
        if self._pq is None:
            import faiss

            pq = faiss.ProductQuantizer(self.dim, self.m, self.nbits)
            faiss.copy_array_to_vector(self.centroids.numpy().ravel(), pq.centroids)
            self._pq = pq
        return self._pq

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        rows = self._quantizer().decode(np.ascontiguousarray(self.codes[flat].numpy()))
        return torch.from_numpy(rows).view(*ids.shape, self.dim)


def product_quantization(
    e: Tensor, *, m: int, nbits: int = 8, seed: int = 0, niter: int = 25
) -> BaselineResult:
    """faiss product quantization: M subquantizers of ``2^nbits`` centroids each, trained on E itself.

    Args:
        e: the V x d fp32 matrix.
        m: number of subquantizers (must divide d).
        nbits: bits per subquantizer code.
        seed: k-means seed (``ProductQuantizer.cp.seed``).
        niter: k-means iterations.
    """
    import faiss

    e = _check_matrix(e)
    vocab, dim = e.shape
    if m < 1 or dim % m:
        raise ValueError(f"M must divide the embedding width {dim}, got {m}")
    x = np.ascontiguousarray(e.numpy(), dtype=np.float32)
    start = time.perf_counter()
    pq = faiss.ProductQuantizer(dim, m, nbits)
    pq.cp.seed = seed
    pq.cp.niter = niter
    pq.cp.verbose = False
    pq.train(x)
    codes = pq.compute_codes(x)
    seconds = time.perf_counter() - start
    centroids = faiss.vector_to_array(pq.centroids).astype(np.float32).reshape(m, 1 << nbits, dim // m)
    reconstructed = torch.from_numpy(pq.decode(codes)).float()
    decoder = PQDecoder(torch.from_numpy(codes), torch.from_numpy(centroids), dim=dim, m=m, nbits=nbits)
    decoder._pq = pq
    return BaselineResult(
        name="pq",
        params={
            "M": m,
            "nbits": nbits,
            "code_bytes_per_row": int(pq.code_size),
            "codebook_dtype": "float32",
            "seed": seed,
            "niter": niter,
            "faiss": faiss.__version__,
        },
        reconstructed=reconstructed,
        nbytes=int(codes.nbytes) + int(centroids.size) * 4,
        seconds=seconds,
        decoder=decoder,
    )
