"""ONNX export of a LightToken-compressed model with the token-matrix decode inside the graph.

The exported graph stores the compressed tensors as they are in the checkpoint (packed uint8 codes,
int8 decoder weights and their scales, fp16 low-rank factors, coverage masks, the padding row) and
rebuilds only the looked-up rows with standard ONNX ops (Gather, Cast, MatMul, Mul, Add, Where), so
the file is about the checkpoint's size, never the dense V x d matrix. Bit unpacking is done by table
lookups (a 256 x 8 table of +-1 signs per code byte, and 2048-entry tables for a coverage mask's bit
and its in-byte prefix count), which every onnxruntime build supports.

Heads: the base model (hidden states), sequence / token classification, question answering and masked
or causal LMs (without the KV cache: ``use_cache=False``, one full forward per call). A compressed output
layer (:class:`~.core.modeling_lighttoken.LightTokenLMHead`: tied, or an untied one with its own compressed
matrix) is exported by decoding the *full* V x d matrix inside the graph on every call (the file stays
small; the runtime memory holds the decoded matrix during a call). An output layer kept dense
(``output_layer="dense"``) stays a dense Linear, as in the checkpoint. onnxruntime's constant folding decodes
such a head's whole matrix (it reads initializers only) once, when a session starts; for Gemma-3-270M's 262,144
rows that session ran out of a 24 GB machine's memory. For a large vocabulary create the session with
``disabled_optimizers=["ConstantFolding"]``: each call then decodes the matrix again (time and memory for
Gemma-3-270M: ``benchmarks/onnx_lm.py``).

A quantized backbone stays quantized in the file: each Linear weight the tracer writes as floats is replaced by
the checkpoint's integers and scales and the standard ops that dequantize them (torchao int8: int8 levels and
a Cast, the scales applied after the matmul as in PyTorch; compressed-tensors int4: two levels per byte,
unpacked with BitShift/Sub/Cast and scaled per group with Mul). They read initializers only, so
onnxruntime's constant folding can compute them once, when a session starts.

The exporter is ``torch.onnx.export(..., dynamo=False)`` with constant folding off: folding would turn
the casts of the stored uint8 / int8 / fp16 tensors into fp32 or int64 initializers and inflate the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from .compressor.backbone import int_levels
from .core.lighttoken_codec import LightTokenEmbedding
from .core.modeling_lighttoken import LightTokenLMHead, LightTokenPreTrainedModel

__all__ = ["OnnxLightTokenEmbedding", "export_onnx"]

#: Heads whose forward takes (batch, sequence) token ids; multiple choice takes (batch, choices, sequence).
_SUPPORTED = (
    "LightTokenModel",
    "LightTokenForSequenceClassification",
    "LightTokenForTokenClassification",
    "LightTokenForQuestionAnswering",
    "LightTokenForMaskedLM",
    "LightTokenForCausalLM",
)


class OnnxLightTokenEmbedding(nn.Module):
    """An export-friendly view of a :class:`LightTokenEmbedding`: the same rows, traceable ops only.

    It shares the embedding's stored tensors (registered here as buffers, so the exporter writes them
    once, in their stored dtypes) and adds three small lookup tables and, per frequency tier, the prefix
    count of its coverage mask (int32, 4 bytes per 8 tokens). ``forward`` decodes only the requested
    ids; ``decode_all`` decodes the full matrix (for a tied output layer).
    """

    def __init__(self, embedding: LightTokenEmbedding) -> None:
        super().__init__()
        self.embedding_dim = embedding.embedding_dim
        self.num_embeddings = embedding.num_embeddings
        self.padding_idx = embedding.padding_idx
        self.output_scale = embedding.output_scale
        self.stage_bits = list(embedding.stage_bits)
        self.stage_rows = list(embedding.stage_rows)
        self.svd_rank = embedding.svd_rank
        self.int8_decoders = embedding.int8_decoders
        self.full = [r == self.num_embeddings for r in self.stage_rows]
        for name, tensor in [*embedding.named_parameters(), *embedding.named_buffers()]:
            self.register_buffer(name, tensor.detach())
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1  # (256, 8), little-endian
        self.register_buffer("sign_table", bits.float() * 2 - 1)
        # index byte * 8 + offset: is bit `offset` set, and how many bits below it are set
        self.register_buffer("bit_table", bits.flatten().to(torch.int32))
        below = torch.cumsum(bits, dim=1) - bits
        self.register_buffer("below_table", below.flatten().to(torch.int32))
        for s, full in enumerate(self.full):
            if not full:
                prefix, _ = embedding.coverage_prefix(s)  # checks the mask against the config
                self.register_buffer(f"prefix_{s}", prefix.to(torch.int32))

    def _stage_index(self, s: int, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inside as float 0/1, row as int64) of ``ids`` in stage ``s``."""
        rows = self.stage_rows[s]
        byte_index = torch.div(ids, 8, rounding_mode="floor")
        byte = getattr(self, f"coverage_{s}").index_select(0, byte_index).long()
        slot = byte * 8 + torch.remainder(ids, 8)
        inside = self.bit_table.index_select(0, slot)
        row = getattr(self, f"prefix_{s}").index_select(0, byte_index) + self.below_table.index_select(
            0, slot
        )
        return inside.float(), row.long().clamp(max=rows - 1)

    def _decoder_weight(self, s: int) -> torch.Tensor:
        if self.int8_decoders:
            scale = getattr(self, f"decoder_{s}_scale").float()
            return getattr(self, f"decoder_{s}_qweight").float() * scale.unsqueeze(1)
        return getattr(self, f"decoder_{s}_weight").float()

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` (1-D int64) as (N, d) float32, as :meth:`LightTokenEmbedding.decode_rows`."""
        # the sum starts from its first term, not from zeros: zeros of a static shape (``decode_all``) would be
        # traced as a dense N x d constant in the file
        out: torch.Tensor | None = None
        if self.svd_rank:
            left = self.lowrank_left.index_select(0, ids).float()
            out = left @ self.lowrank_right.float()
        for s, bits in enumerate(self.stage_bits):
            if self.full[s]:
                inside, row = None, ids
            else:
                inside, row = self._stage_index(s, ids)
            codes = getattr(self, f"codes_{s}").index_select(0, row).long()
            signs = nn.functional.embedding(codes, self.sign_table).flatten(1)[:, :bits]
            part = signs @ self._decoder_weight(s) + getattr(self, f"decoder_{s}_bias").float()
            part = part if inside is None else part * inside.unsqueeze(1)
            out = part if out is None else out + part
        if out is None:  # no low-rank part and no stage: every row is zero
            out = torch.zeros(ids.shape[0], self.embedding_dim, dtype=torch.float32)
        if self.padding_idx is not None:
            is_pad = (ids == self.padding_idx).unsqueeze(1)
            out = torch.where(is_pad, self.padding_row.float().unsqueeze(0), out)
        return out

    def decode_all(self) -> torch.Tensor:
        """The full reconstructed V x d matrix (unscaled, like ``LightTokenEmbedding.weight``)."""
        return self.decode(torch.arange(self.num_embeddings))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = self.decode(input_ids.reshape(-1).long())
        if self.output_scale != 1.0:
            rows = rows * self.output_scale
        return rows.reshape(*input_ids.shape, self.embedding_dim)


class _OnnxHead(nn.Module):
    """A compressed output layer for export: ``hidden @ decode_all()^T (+ biases)``, the full matrix decoded
    in-graph: the input embedding's (tied) or its own (an untied output matrix compressed on its own)."""

    def __init__(self, embedding: OnnxLightTokenEmbedding, biases: list[torch.Tensor], own: bool) -> None:
        super().__init__()
        if own:
            self.embedding = embedding
        else:
            self.__dict__["embedding"] = embedding  # its tensors are the input embedding's
        self.biases = nn.ParameterList(biases)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = hidden.float() @ self.embedding.decode_all().T
        for bias in self.biases:
            logits = logits + bias.float()
        return logits


class _QuantizedWeight(NamedTuple):
    """A quantized Linear weight as the checkpoint stores it: integer levels (out x in), their scales (int8:
    one per output row, shape (out,), or ``None`` where the graph applies them after the matmul; int4: one
    per group of ``group`` columns, shape (out, in / group)), the float32 matrix the traced graph holds and
    the levels' bits (grouped weights: 4, or 6 for an int4 backbone's value projections)."""

    levels: torch.Tensor
    scales: torch.Tensor | None
    group: int | None
    dense: torch.Tensor
    bits: int = 8


def _quantized_linears(model: nn.Module) -> list[_QuantizedWeight]:
    """The quantized Linear weights of ``model``: torchao's int8 (``Int8Tensor``: ``qdata``, ``scale``) and
    compressed-tensors' int4 (unpacked weight with its group scales ``weight_scale``)."""
    found = []
    for module in model.modules():
        if not isinstance(module, nn.Linear):
            continue
        weight = module.weight
        if type(weight).__name__ == "Int8Tensor":  # traced as the float levels times the scales after the matmul
            found.append(_QuantizedWeight(weight.qdata, None, None, weight.qdata.float()))
            found.append(
                _QuantizedWeight(weight.qdata, weight.scale.reshape(-1).float(), None, weight.dequantize().float())
            )
        elif getattr(module, "weight_scale", None) is not None and weight.dtype.is_floating_point:
            scales = module.weight_scale.detach().float()
            group = weight.shape[1] // scales.shape[1]
            dense = weight.detach().float()
            bits = module.quantization_scheme.weights.num_bits
            low, high = int_levels(bits)
            levels = (dense / scales.repeat_interleave(group, dim=1)).round().clamp(low, high).to(torch.int8)
            found.append(_QuantizedWeight(levels, scales, group, dense, bits))
    return found


def _requantize(graph: Any, weights: list[_QuantizedWeight]) -> None:
    """Replace each float tensor of ``graph`` (an initializer or a Constant node) that holds one of ``weights``
    dequantized (as it is or transposed) by its stored integers, scales and the standard ops that dequantize
    them: int8 by ``DequantizeLinear`` (per output row); int4 packed two per byte and unpacked with
    ``BitShift``, ``Sub``, ``Cast`` and ``Mul``, scales exact in fp16 kept in fp16 (ops of every opset from 11,
    every onnxruntime build). The
    graph's outputs are unchanged; its file holds the quantized backbone at the checkpoint's size."""
    import numpy as np
    from onnx import numpy_helper

    by_bytes = {}
    for weight in weights:
        dense = weight.dense.contiguous().numpy()
        by_bytes[(dense.shape, dense.tobytes())] = (weight, False)
        by_bytes[(dense.T.shape, np.ascontiguousarray(dense.T).tobytes())] = (weight, True)
    tensors = [(t, None) for t in graph.graph.initializer]
    tensors += [(n.attribute[0].t, n) for n in graph.graph.node if n.op_type == "Constant" and n.attribute[0].t.dims]
    nodes: list[Any] = []
    for tensor, constant in tensors:
        if tensor.data_type != 1 or len(tensor.dims) != 2:  # float32 matrices only
            continue
        array = numpy_helper.to_array(tensor)
        match = by_bytes.get((array.shape, array.tobytes()))
        if match is None:
            continue
        weight, transposed = match
        name = constant.output[0] if constant is not None else tensor.name
        if constant is not None:
            graph.graph.node.remove(constant)
        else:
            graph.graph.initializer.remove(tensor)
        nodes += _dequantize_nodes(graph, name, weight, transposed, f"{name}_q")
    existing = list(graph.graph.node)  # initializer-only subgraphs: before every node that reads their outputs
    del graph.graph.node[:]
    graph.graph.node.extend([*nodes, *existing])


def _dequantize_nodes(graph: Any, name: str, weight: _QuantizedWeight, transposed: bool, prefix: str) -> list:
    """Nodes computing the float weight ``name`` from new initializers (named ``prefix``_*) holding ``weight``."""
    import numpy as np
    from onnx import helper, numpy_helper

    def constant(suffix: str, value: Any) -> str:
        graph.graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"{prefix}_{suffix}"))
        return f"{prefix}_{suffix}"

    out, cols = weight.levels.shape
    dense_name = f"{prefix}_dense" if transposed else name
    levels = weight.levels.numpy()
    if weight.scales is None:  # int8 levels the graph scales itself
        nodes = [helper.make_node("Cast", [constant("levels", levels)], [dense_name], to=1)]
    elif weight.group is None:  # int8, one scale per output row
        nodes = [
            helper.make_node(
                "DequantizeLinear",
                [
                    constant("levels", levels),
                    constant("scale", weight.scales.numpy()),
                    constant("zero", np.zeros(out, np.int8)),
                ],
                [dense_name],
                axis=0,
            )
        ]
    else:  # levels in groups of `group` columns, each group with its scale
        t = f"{prefix}_t"
        scales = weight.scales.numpy()
        if np.array_equal(scales.astype(np.float16).astype(np.float32), scales):  # fp16 scales, as stored
            scale = f"{prefix}_scale"
            nodes = [helper.make_node("Cast", [constant("scale16", scales.astype(np.float16))], [scale], to=1)]
        else:
            scale, nodes = constant("scale", scales), []
        last = constant("last", np.array([2], np.int64))
        if weight.bits == 4:  # int4 in -8..7, stored + 8 as two nibbles per byte (low nibble: the even column)
            nibbles = (levels.astype(np.int16) + 8).astype(np.uint8).reshape(out, cols // 2, 2)
            packed = constant("packed", nibbles[..., 0] | (nibbles[..., 1] << 4))
            nodes += [
                helper.make_node("BitShift", [packed, constant("four", np.uint8(4))], [f"{t}_high"], direction="RIGHT"),
                helper.make_node("BitShift", [f"{t}_high", f"{prefix}_four"], [f"{t}_high_up"], direction="LEFT"),
                helper.make_node("Sub", [packed, f"{t}_high_up"], [f"{t}_low"]),
                helper.make_node("Unsqueeze", [f"{t}_low", last], [f"{t}_low3"]),
                helper.make_node("Unsqueeze", [f"{t}_high", last], [f"{t}_high3"]),
                helper.make_node("Concat", [f"{t}_low3", f"{t}_high3"], [f"{t}_pairs"], axis=2),
                helper.make_node("Cast", [f"{t}_pairs"], [f"{t}_float"], to=1),
                helper.make_node("Sub", [f"{t}_float", constant("eight", np.float32(8))], [f"{t}_signed"]),
            ]
        else:  # wider levels (an int4 backbone's int6 value projections): one int8 each
            nodes.append(helper.make_node("Cast", [constant("levels", levels)], [f"{t}_signed"], to=1))
        nodes += [
            helper.make_node(
                "Reshape",
                [f"{t}_signed", constant("groups", np.array([out, cols // weight.group, weight.group], np.int64))],
                [f"{t}_grouped"],
            ),
            helper.make_node("Unsqueeze", [scale, last], [f"{t}_scale3"]),
            helper.make_node("Mul", [f"{t}_grouped", f"{t}_scale3"], [f"{t}_scaled"]),
            helper.make_node(
                "Reshape", [f"{t}_scaled", constant("shape", np.array([out, cols], np.int64))], [dense_name]
            ),
        ]
    if transposed:
        nodes.append(helper.make_node("Transpose", [dense_name], [name], perm=[1, 0]))
    return nodes


class _Exported(nn.Module):
    """Positional-tensor forward returning a tuple of tensors, for the exporter."""

    def __init__(self, model: LightTokenPreTrainedModel, inputs: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.model = model
        self.inputs, self.outputs = inputs, outputs

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs: dict[str, Any] = dict(zip(self.inputs, tensors))
        if type(self.model).__name__ == "LightTokenForCausalLM":
            kwargs["use_cache"] = False
        out = self.model(**kwargs, return_dict=True)
        return tuple(out[name] for name in self.outputs)


def _load(checkpoint: str | os.PathLike) -> LightTokenPreTrainedModel:
    from transformers import AutoConfig

    import lighttoken_hf  # noqa: F401 - registers the lighttoken model type
    from lighttoken_hf.core.modeling_lighttoken import LIGHTTOKEN_CLASSES

    path = Path(checkpoint).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{path} is not a checkpoint folder (no config.json); pass a folder saved by "
            "`lighttoken compress` or save_pretrained"
        )
    config = AutoConfig.from_pretrained(path)
    if config.model_type != "lighttoken":
        raise ValueError(
            f"{path} holds a {config.model_type!r} model, not a LightToken-compressed one: "
            "compress it first (lighttoken compress MODEL --out DIR), then export DIR"
        )
    classes = {cls.__name__: cls for _, cls in LIGHTTOKEN_CLASSES}
    name = next((a for a in (config.architectures or []) if a in classes), "LightTokenModel")
    return classes[name].from_pretrained(path).eval()


@contextlib.contextmanager
def _export_view(model: LightTokenPreTrainedModel) -> Iterator[None]:
    """Swap the input embedding (and a compressed head) for their export views; restore them afterwards."""
    backbone = model.backbone
    embedding = backbone.get_input_embeddings()
    view = OnnxLightTokenEmbedding(embedding)
    head = backbone.get_output_embeddings()
    head_name = None
    if isinstance(head, LightTokenLMHead):
        head_name = next(n for n, m in backbone.named_modules() if m is head)
    owner_name, attr = next(
        (n.rpartition(".")[0], n.rpartition(".")[2]) for n, m in backbone.named_modules() if m is embedding
    )
    owner = backbone.get_submodule(owner_name)
    setattr(owner, attr, view)
    if head_name is not None:
        parent, _, head_attr = head_name.rpartition(".")
        biases = [b for b in (head.bias, head.logit_bias) if b is not None]
        own = not head.tied
        head_view = OnnxLightTokenEmbedding(head.embedding) if own else view
        setattr(backbone.get_submodule(parent), head_attr, _OnnxHead(head_view, biases, own))
    try:
        yield
    finally:
        setattr(owner, attr, embedding)
        if head_name is not None:
            setattr(backbone.get_submodule(parent), head_attr, head)


def _output_names(model: LightTokenPreTrainedModel) -> list[str]:
    name = type(model).__name__
    if name == "LightTokenModel":
        outs = ["last_hidden_state"]
        if getattr(model.backbone, "pooler", None) is not None:
            outs.append("pooler_output")
        return outs
    if name == "LightTokenForQuestionAnswering":
        return ["start_logits", "end_logits"]
    return ["logits"]


def export_onnx(
    checkpoint_dir_or_model: str | os.PathLike | LightTokenPreTrainedModel,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    inputs: list[str] | None = None,
    batch: int = 2,
    sequence: int = 8,
    check: bool = True,
    overwrite: bool = True,
) -> Path:
    """Export a LightToken-compressed model to ONNX with the token-matrix decode inside the graph.

    Args:
        checkpoint_dir_or_model: a compressed checkpoint folder or an in-memory compressed model.
        path: the ``.onnx`` file to write (atomically: an interrupted export leaves no file behind).
        opset: ONNX opset version.
        inputs: graph inputs (default: ``input_ids``, ``attention_mask`` and, when the backbone takes
            them, ``token_type_ids``); batch and sequence axes are dynamic.
        batch, sequence: shape of the dummy inputs used for tracing.
        check: run ``onnx.checker.check_model`` on the written file.
        overwrite: replace an existing file at ``path`` (otherwise ``FileExistsError``).

    Returns:
        The path of the written file.

    Raises:
        ImportError: ``onnx`` is not installed (``pip install lighttoken-hf[onnx]``).
        ValueError: the model is not LightToken-compressed, or its head is not supported.
    """
    try:
        import onnx
    except ImportError as err:
        raise ImportError("ONNX export needs the onnx package: pip install 'lighttoken-hf[onnx]'") from err
    model = checkpoint_dir_or_model
    if isinstance(model, (str, os.PathLike)):
        model = _load(model)
    if not isinstance(model, LightTokenPreTrainedModel) or not isinstance(
        model.get_input_embeddings(), LightTokenEmbedding
    ):
        raise ValueError(
            f"export_onnx exports LightToken-compressed models, got {type(model).__name__}: compress it first "
            "with lighttoken_hf.compress(model, ratio) (a plain model exports with torch.onnx.export)"
        )
    if type(model).__name__ not in _SUPPORTED:
        raise ValueError(
            f"ONNX export of {type(model).__name__} is not supported; supported heads: {', '.join(_SUPPORTED)}"
        )
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True or choose another path")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the folder of {out} does not exist; create it first")
    import inspect

    accepted = inspect.signature(model.backbone.forward).parameters
    if inputs is None:
        inputs = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in accepted]
    unknown = [n for n in inputs if n not in accepted]
    if unknown:
        raise ValueError(f"the model's forward takes no input {unknown[0]!r}; it takes {', '.join(accepted)}")
    vocab = model.get_input_embeddings().num_embeddings
    dummy = {
        "input_ids": torch.randint(0, vocab, (batch, sequence)),
        "attention_mask": torch.ones(batch, sequence, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, sequence, dtype=torch.long),
        "position_ids": torch.arange(sequence).expand(batch, sequence).contiguous(),
    }
    args = tuple(dummy[n] for n in inputs)
    outputs = _output_names(model)
    dims = {0: "batch", 1: "sequence"}
    dynamic = {n: dims for n in [*inputs, *outputs]}
    if "pooler_output" in outputs:
        dynamic["pooler_output"] = {0: "batch"}
    if type(model).__name__ == "LightTokenForSequenceClassification":
        dynamic["logits"] = {0: "batch"}
    # an int4 backbone (compressed-tensors) loads packed and unpacks on its first forward: unpack it before
    # tracing; the traced graph holds every quantized Linear weight dequantized, which _requantize then
    # replaces by the stored integers and scales
    compressor = getattr(getattr(model, "hf_quantizer", None), "compressor", None)
    if compressor is not None and any(hasattr(m, "weight_packed") for m in model.modules()):
        compressor.decompress_model(model)
    quantized = _quantized_linears(model)
    if quantized and opset < 13:
        raise ValueError(
            f"the backbone's quantized weights are written with DequantizeLinear per output row and Unsqueeze with "
            f"axes as an input, which need opset 13 or newer; got opset={opset} (use the default, 17)"
        )
    was_training = model.training
    model.eval()
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        with _export_view(model), torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes on the backbone's shape checks (constant for any batch / sequence)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                _Exported(model, inputs, outputs),
                args,
                tmp,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=False,
                dynamo=False,
            )
        if quantized:
            graph = onnx.load(tmp)
            _requantize(graph, quantized)
            onnx.save(graph, tmp)
        if check:
            onnx.checker.check_model(tmp)
        os.replace(tmp, out)
    finally:
        model.train(was_training)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
