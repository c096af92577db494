"""Whole-model compression: the backbone's Linear weights by weight-only quantization from a maintained
library, in a form transformers saves to safetensors and rebuilds from ``config.json`` on ``from_pretrained``.

``"int8"``: torchao's ``Int8WeightOnlyConfig`` (symmetric int8, one scale per output channel) through
transformers' own ``TorchAoConfig``: transformers applies it while it loads the weights, saves the quantized
tensors and restores them on load. Quantizing a live model with ``torchao.quantize_`` instead leaves tensor
subclasses ``save_pretrained`` cannot write.

``"int4"``: compressed-tensors' ``pack-quantized`` format (symmetric int4 in groups of
:data:`INT4_GROUP_SIZE` input columns, one :data:`INT4_SCALE_DTYPE` scale per group; eight values per int32),
the format vLLM and transformers load. torchao 0.18 has no int4 layout that both runs on a CPU without its
``mslk`` kernels and is serializable (its CPU layout, ``Int4OpaqueTensor``, is not in its safetensors
allow-list), so int4 comes from compressed-tensors. Its levels are chosen by error-compensating rounding on
calibration text (:func:`gptq_int4`, GPTQ: each Linear keeps its outputs on its real inputs; what each choice
costs is measured in ``docs/method.md`` section 8), the format and size unchanged. The value projections of
grouped-query attention get int6 on the same groups (:data:`INT4_VALUE_BITS`, as llama.cpp's Q4_K_M).
transformers loads such a checkpoint with the weights packed and unpacks them on the first forward;
``save_pretrained`` of a LightToken model packs them again.

Either way: every ``nn.Linear`` of the backbone (a Linear whose input width is not a multiple of the group
size keeps its weights); the compressed token matrix (not a Linear), norms, biases and position embeddings
keep their format. The checkpoint then needs the library to load (lighttoken_hf does not: the remote code
does the rest).
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from .frequencies import general_text_samples
from .metrics import tokenized_batches
from .settings import BACKBONE_LIBRARIES, BACKBONE_QUANTIZATIONS

__all__ = [
    "INT4_GROUP_SIZE",
    "INT4_SCALE_DTYPE",
    "INT4_VALUE_BITS",
    "VALUE_PROJECTIONS",
    "calibration_batches",
    "check_backbone",
    "gptq_int4",
    "input_hessians",
    "int_levels",
    "pack_int4",
    "quantize_backbone",
    "value_projections",
]

#: Input columns sharing one int4 scale, and the scales' stored dtype: an fp16 scale per 32 weights adds half a
#: bit, 4.5 bits per weight in all, as llama.cpp's Q4_0 (the same bytes as fp32 scales per 64, a finer grid:
#: ``docs/method.md`` section 8). The quantization config records the dtype; in memory compressed-tensors keeps
#: the scales in the weights' dtype (their values exact in fp16), and a LightToken model's ``save_pretrained``
#: writes them in fp16 (``scales_as_stored``).
INT4_GROUP_SIZE = 32
INT4_SCALE_DTYPE = torch.float16
#: Bits of the value projections of grouped-query attention in an int4 backbone (same groups and scales: 6.5 bits
#: per weight), as llama.cpp's Q4_K_M gives its value projections 6 bits: one value head serves several query
#: heads, so its error reaches all of them, and it is a small matrix (its output narrower than its input).
#: What it does for Gemma-3-270M: ``docs/method.md`` section 8.
INT4_VALUE_BITS = 6
#: Names of value projections (the last part of a Linear's module name) across transformers' architectures.
VALUE_PROJECTIONS = ("v_proj", "value", "v_lin", "v")


def check_backbone(model: torch.nn.Module, kind: str) -> None:
    """Fail early and clearly where ``model``'s backbone cannot be quantized to ``kind``: the library is not
    installed (``ImportError``), or no Linear layer is wide enough for int4's groups (``ValueError``)."""
    library = BACKBONE_LIBRARIES[kind]
    if importlib.util.find_spec(library.replace("-", "_")) is None:
        raise ImportError(
            f"quantize_backbone={kind!r} needs {library} (weight-only quantization): "
            f"pip install 'lighttoken-hf[quantize]' (or pip install {library})"
        )
    if kind == "int4":
        _check_int4_widths(model, ("Linear",))


def _check_int4_widths(model: torch.nn.Module, targets: tuple[str, ...]) -> list[str]:
    """The names of the ``targets`` modules too narrow for int4's groups (they keep their weights); raises
    ``ValueError`` when that is every one of them."""
    modules = [(name, m) for name, m in model.named_modules() if type(m).__name__ in targets]
    narrow = [name for name, m in modules if m.weight.shape[-1] % INT4_GROUP_SIZE]
    if len(narrow) == len(modules):
        raise ValueError(
            f"int4 quantization groups {INT4_GROUP_SIZE} input columns, and no {'/'.join(targets)} layer of "
            f"{type(model).__name__} has a width that is a multiple of {INT4_GROUP_SIZE}: nothing would be "
            "quantized; use quantize_backbone='int8'"
        )
    return narrow


def value_projections(model: torch.nn.Module, targets: tuple[str, ...] = ("Linear",)) -> list[str]:
    """The names of ``model``'s ``targets`` modules that :func:`pack_int4` rounds to :data:`INT4_VALUE_BITS`:
    value projections (:data:`VALUE_PROJECTIONS`) of grouped-query attention (fewer outputs than inputs), of a
    width int4's groups divide."""
    return [
        name
        for name, module in model.named_modules()
        if type(module).__name__ in targets
        and name.rsplit(".", 1)[-1] in VALUE_PROJECTIONS
        and module.out_features < module.in_features
        and module.in_features % INT4_GROUP_SIZE == 0
    ]


def quantize_backbone(
    model: Any, kind: str, calibration: Iterable[dict[str, torch.Tensor]] | None = None, *, progress: bool = False
) -> Any:
    """``model`` (a LightToken model) with its backbone's Linear weights quantized to ``kind``, saved and
    loaded again through transformers (see the module docstring). The returned model is a new object.

    ``calibration``: model inputs (tokenized batches) for int4's error-compensating rounding (:func:`gptq_int4`,
    from each Linear's input statistics on them); without it, int4 rounds each weight to its nearest level.
    int8 (one scale per output channel) rounds to nearest either way."""
    if kind not in BACKBONE_QUANTIZATIONS:
        raise ValueError(f"quantize_backbone must be one of {list(BACKBONE_QUANTIZATIONS)} or None, got {kind!r}")
    check_backbone(model, kind)
    with tempfile.TemporaryDirectory(prefix="lighttoken-quantize-") as folder:
        if kind == "int8":
            from torchao.quantization import Int8WeightOnlyConfig
            from transformers import TorchAoConfig

            model.save_pretrained(folder)
            quantized = type(model).from_pretrained(folder, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
        else:
            hessians = input_hessians(model, calibration, progress=progress) if calibration is not None else None
            _save_int4(model, folder, hessians, progress)
            quantized = type(model).from_pretrained(folder)
    return quantized.train(model.training)


def _save_int4(
    model: Any, folder: str, hessians: dict[str, torch.Tensor] | None = None, progress: bool = False
) -> None:
    """Write ``model`` to ``folder`` with its Linear weights in compressed-tensors' int4 pack-quantized form.

    A copy is quantized (read back from a plain save): ``model`` itself is left as it was.
    """
    with tempfile.TemporaryDirectory(prefix="lighttoken-quantize-dense-") as dense:
        model.save_pretrained(dense)
        copy = type(model).from_pretrained(dense)
    compressor = pack_int4(copy, hessians=hessians, progress=progress)
    copy.save_pretrained(folder)
    compressor.update_config(folder)


def pack_int4(
    model: torch.nn.Module,
    targets: tuple[str, ...] = ("Linear",),
    *,
    hessians: dict[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> Any:
    """Quantize ``model``'s ``targets`` modules (class names) to int4 in place, packed the way compressed-tensors
    stores them (``weight_packed``, ``weight_scale``, ``weight_shape``), and return the library's
    ``ModelCompressor`` (its ``add_decompress_hook(model)`` makes the model run again; the benchmarks use
    ``targets=("Linear", "Embedding")`` for int4 everywhere).

    Each group of :data:`INT4_GROUP_SIZE` columns gets the scale with the least squared rounding error
    among :data:`INT4_SCALE_SHRINKS` times its largest magnitude over 7.5 (compressed-tensors' symmetric int4
    range is -8..7; a smaller scale clips the largest values and rounds the rest finer, as llama.cpp's
    quantizers search too). A module named in ``hessians`` (:func:`input_hessians`) is rounded by
    :func:`gptq_int4` instead. A module whose width is not a multiple of the group size keeps its weights.
    Value projections of grouped-query attention (:func:`value_projections`) get :data:`INT4_VALUE_BITS` bits
    on the same groups (a second config group: compressed-tensors packs any width up to 8 bits).
    """
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )

    def grid(bits: int) -> QuantizationArgs:
        return QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group",
                                group_size=INT4_GROUP_SIZE, scale_dtype=INT4_SCALE_DTYPE)  # fmt: skip

    keep = _check_int4_widths(model, targets)
    # compressed-tensors gives a module the scheme of its most specific target (a name before a class name), but
    # tries the targets in order to warn of one no module matched: the named value projections come first
    wider = value_projections(model, targets)
    groups = {"group_0": QuantizationScheme(targets=wider, weights=grid(INT4_VALUE_BITS))} if wider else {}
    groups[f"group_{len(groups)}"] = QuantizationScheme(targets=list(targets), weights=grid(4))
    config = QuantizationConfig(
        config_groups=groups,
        quantization_status=QuantizationStatus.INITIALIZED,
        ignore=keep,
    )
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        modules = [(name, m) for name, m in model.named_modules() if hasattr(m, "weight_scale")]
        for name, module in tqdm(modules, desc="LightToken: int4 backbone", unit="layer", disable=not progress):
            bits = module.quantization_scheme.weights.num_bits
            if hessians is not None and name in hessians:
                levels, scale = gptq_int4(module.weight.detach(), hessians[name], bits=bits)
                module.weight.copy_(_dequantize(levels, scale).to(module.weight.dtype))
            else:  # compressed-tensors rounds each weight to the nearest level of its group's scale
                weight = module.weight.detach().float()
                groups = weight.reshape(weight.shape[0], -1, INT4_GROUP_SIZE)
                scale = _best_int4_scales(groups, INT4_SCALE_DTYPE, bits=bits)
            module.weight_scale.copy_(scale.reshape(module.weight_scale.shape))
            if hasattr(module, "weight_zero_point"):  # symmetric: zero
                module.weight_zero_point.zero_()
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="pack-quantized")
    saved = compressor.quantization_config  # its groups in the order of each one's first module; config.json
    schemes = sorted(saved.config_groups.values(), key=lambda scheme: scheme.targets == list(targets))
    saved.config_groups = {f"group_{i}": scheme for i, scheme in enumerate(schemes)}  # sorts them by name
    compressor.compress_model(model)
    return compressor


#: Fractions of the absmax scale tried for each int4 group (the one with the least squared error is kept).
INT4_SCALE_SHRINKS = tuple(1.0 - 0.025 * i for i in range(13))


def _best_int4_scales(groups: torch.Tensor, dtype: torch.dtype = torch.float32, bits: int = 4) -> torch.Tensor:
    """Per group (``groups``: rows x groups x size), the scale among :data:`INT4_SCALE_SHRINKS` times the
    absmax scale (largest magnitude over 7.5), each rounded to ``dtype`` (as it will be stored), whose int4
    rounding (-8..7) reconstructs the group with the least squared error. Returned in float32, its values
    exact in ``dtype``. ``bits``: another width's symmetric range (int6: -32..31, magnitude over 31.5)."""
    low, high = int_levels(bits)
    absmax_scale = groups.abs().amax(-1) / (high + 0.5)
    best_scale, best_error = None, None
    for shrink in INT4_SCALE_SHRINKS:
        scale = (absmax_scale * shrink).clamp_min(torch.finfo(dtype).tiny).to(dtype).float().unsqueeze(-1)
        error = ((groups / scale).round().clamp(low, high) * scale - groups).square().sum(-1)
        if best_error is None:
            best_error, best_scale = error, scale.squeeze(-1)
            continue
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale.squeeze(-1), best_scale)
    return best_scale


def int_levels(bits: int) -> tuple[int, int]:
    """The lowest and highest level of symmetric ``bits``-bit integers as compressed-tensors stores them
    (int4: -8 and 7)."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


#: Calibration texts per batch, and tokens per text, of :func:`calibration_batches`.
CALIBRATION_BATCH = 8
CALIBRATION_MAX_LENGTH = 256
#: Added to a Hessian's diagonal before it is inverted, as a share of its mean diagonal (GPTQ's damping).
GPTQ_DAMPING = 0.01
#: Columns :func:`gptq_int4` rounds before it updates the rest of the matrix at once (a multiple of the group size).
GPTQ_BLOCK = 128


def calibration_batches(
    tokenizer: Any, texts: Sequence[str] | None = None, *, seed: int = 0, device: torch.device | str = "cpu"
) -> list[dict[str, torch.Tensor]]:
    """``texts`` (default: the wordfreq pseudo-sentences ``general_text_samples(seed=seed)``, as for the
    sensitivity metric) tokenized as :func:`input_hessians` takes them: batches of :data:`CALIBRATION_BATCH`
    texts, each up to :data:`CALIBRATION_MAX_LENGTH` tokens."""
    texts = list(texts) if texts is not None else general_text_samples(seed=seed)
    batches = tokenized_batches(
        tokenizer, texts, batch_size=CALIBRATION_BATCH, max_length=CALIBRATION_MAX_LENGTH, device=torch.device(device)
    )
    return list(batches)


class _LayerInputsRecorded(Exception):
    """Stops a calibration forward at the output layer once every layer to quantize has seen its input."""


def input_hessians(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    targets: tuple[str, ...] = ("Linear",),
    *,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``{name: X^T X / n}`` (float64, on the CPU) of the inputs ``X`` (n x in) each ``targets`` module of
    ``model`` sees when ``model`` runs on ``batches`` (padding positions included only where a batch has no
    attention mask). The statistics :func:`gptq_int4` rounds a layer's weights against. An output layer that is
    not a target (a decoder's tied or LightToken head) is not run: its logits are not needed."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask: list[torch.Tensor | None] = [None]
    recorded: set[str] = set()  # the layers that saw the current batch

    def hook(name: str):
        def record(_module, inputs):
            recorded.add(name)
            x = inputs[0].detach()
            if mask[0] is not None and x.shape[:-1] == mask[0].shape:
                x = x[mask[0]]
            x = x.reshape(-1, x.shape[-1]).float()
            sums[name] = sums.get(name, 0) + (x.T @ x).double().cpu()  # one batch in float32, the sum in float64
            counts[name] = counts.get(name, 0) + x.shape[0]

        return record

    layers = [(name, module) for name, module in model.named_modules() if type(module).__name__ in targets]
    handles = [module.register_forward_pre_hook(hook(name)) for name, module in layers]

    def skip_output(_module, _inputs):  # a decoder's logits (vocabulary x positions) are not needed
        if len(recorded) == len(layers):
            raise _LayerInputsRecorded

    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and type(output).__name__ not in targets:
        handles.append(output.register_forward_pre_hook(skip_output))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in tqdm(batches, desc="LightToken: layer inputs for int4", unit="batch", disable=not progress):
                mask[0] = batch["attention_mask"].bool() if "attention_mask" in batch else None
                recorded.clear()
                with contextlib.suppress(_LayerInputsRecorded):
                    model(**batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not counts:
        raise ValueError("the calibration batches gave no input to any layer to quantize (no batch, or none ran)")
    return {name: sums[name] / counts[name] for name in sums}


def gptq_int4(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    *,
    act_order: bool = True,
    group_size: int = INT4_GROUP_SIZE,
    scale_dtype: torch.dtype = INT4_SCALE_DTYPE,
    bits: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round ``weight`` (out x in) to symmetric int4 in groups of ``group_size`` columns so as to keep
    its outputs on inputs with second moment ``hessian`` (in x in, :func:`input_hessians`): the columns are
    rounded one by one and each one's error is compensated on the columns not yet rounded (GPTQ, Frantar et al.
    2023). ``act_order``: the columns of the largest inputs first, each group's scale chosen beforehand from the
    group's weights as :func:`pack_int4` chooses it; otherwise in column order, each scale from the group's
    compensated weights when its first column comes.

    ``group_size`` and ``scale_dtype`` (the scales are rounded to it before any weight is) give other grids
    than the stored format's, for comparisons (``benchmarks/int4_backbone_probe.py``); ``bits`` another width
    (:data:`INT4_VALUE_BITS` for value projections).

    Returns ``(levels (out x in, int8 in -8..7 for int4), scales (out x in / group, float32))``.
    """
    w = weight.detach().double().cpu().clone()
    rows, cols = w.shape
    if cols % group_size or hessian.shape != (cols, cols):
        raise ValueError(
            f"gptq_int4 needs a width that is a multiple of {group_size} and a {cols} x {cols} Hessian; "
            f"got weight {tuple(w.shape)} and Hessian {tuple(hessian.shape)}"
        )
    h = hessian.double().cpu().clone()
    dead = h.diagonal() <= 0  # inputs that are always zero: their weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h.diagonal().add_(GPTQ_DAMPING * float(h.diagonal().mean()))
    scales = torch.empty(rows, cols // group_size, dtype=torch.float64)
    order = torch.arange(cols)
    low, high = int_levels(bits)
    if act_order:
        groups = w.reshape(rows, -1, group_size)
        scales = _best_int4_scales(groups, scale_dtype, bits).double()
        order = torch.argsort(h.diagonal(), descending=True, stable=True)
        w, h = w[:, order], h[order][:, order]
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    levels = torch.empty(rows, cols, dtype=torch.int8)
    for start in range(0, cols, GPTQ_BLOCK):
        end = min(start + GPTQ_BLOCK, cols)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        inv = inverse[start:end, start:end]
        for i in range(end - start):
            group = int(order[start + i]) // group_size
            if not act_order and (start + i) % group_size == 0:
                weights = block[:, i : i + group_size].unsqueeze(1)
                best = _best_int4_scales(weights, scale_dtype, bits).squeeze(1)
                scales[:, group] = best.double()
            scale = scales[:, group]
            q = (block[:, i] / scale).round().clamp(low, high)
            levels[:, order[start + i]] = q.to(torch.int8)
            error = (block[:, i] - q * scale) / inv[i, i]
            block[:, i:] -= error.unsqueeze(1) * inv[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, end:] -= errors @ inverse[start:end, end:]
    return levels, scales.float()


def _dequantize(levels: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """The weights ``levels * scale`` (each group of columns with its scale: the groups are ``in / scales``)."""
    return levels.float() * scales.float().repeat_interleave(levels.shape[1] // scales.shape[1], dim=1)
