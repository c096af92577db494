"""What a compression produced: :class:`CompressionReport` (plan, real size, fidelity, timings), and
byte counting and formatting helpers."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..core.modeling_lighttoken import scales_as_stored

__all__ = [
    "END_TO_END_LABELS",
    "FIDELITY_LABELS",
    "CompressionReport",
    "fmt_size",
    "model_nbytes",
    "model_parts_nbytes",
    "tensor_nbytes",
]

#: How the report, the model card and ``lighttoken info`` name each matrix-fidelity figure.
FIDELITY_LABELS = {
    "rel_error": "relative Frobenius error",
    "mean_row_cosine": "mean row cosine",
    "min_row_cosine": "min row cosine",
    "nn_overlap": "top-10 NN overlap",
}
#: ... and each end-to-end figure (a key not listed is shown with its underscores as spaces).
END_TO_END_LABELS = {
    "sentence_embedding_cosine": "sentence-embedding cosine",
    "sentences": "sentences",
    "lm_kind": "language model",
    "texts": "evaluation texts",
    "predicted_tokens": "predicted tokens",
    "perplexity_original": "perplexity (original)",
    "perplexity_compressed": "perplexity (compressed)",
    "perplexity_increase": "perplexity increase",
    "next_token_kl": "next-token KL (nats/token)",
    "top1_agreement": "top-1 agreement",
    "sample_prompt": "greedy sample prompt",
    "sample_original": "greedy sample (original)",
    "sample_compressed": "greedy sample (compressed)",
}


#: One line on which number matters, with the measured reference points (benchmarks/README.md).
_READING_GUIDE = (
    "the end-to-end cosine is what matters (1.0 = outputs unchanged; all-MiniLM-L6-v2 measured 0.98 at 25x "
    "and 0.88 at 100x on held-out text); a relative Frobenius error near 0.5 at 25x is normal (product "
    "quantization: 0.55)"
)


_LM_READING_GUIDE = (
    "the perplexity increase is what matters (0 = unchanged; SmolLM2-135M measured +3.6% at 8x and +97% "
    "at 25x on held-out text); next-token KL 0 and top-1 agreement 1 mean the same predictions"
)


def fmt_size(nbytes: float) -> str:
    """``1,234 B`` / ``1.2 KiB`` / ``3.4 MiB`` / ``1.0 GiB`` (binary units)."""
    if nbytes < 1024:
        return f"{int(nbytes):,} B"
    for unit in ("KiB", "MiB", "GiB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}"
    return str(nbytes)


def tensor_nbytes(tensor: torch.Tensor) -> int:
    """Bytes ``tensor`` stores: a torchao quantized tensor counts its inner tensors (int8 data, scales)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(tensor_nbytes(getattr(tensor, name)) for name in names if getattr(tensor, name) is not None)


def _storage_key(tensor: torch.Tensor) -> int:
    """One key per storage (tied weights count once); a tensor subclass without a plain storage by identity."""
    if hasattr(tensor, "__tensor_flatten__"):
        return id(tensor)
    return tensor.untyped_storage().data_ptr()


def model_nbytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage counted once (tied weights once)."""
    return sum(model_parts_nbytes(model).values())


def model_parts_nbytes(model: torch.nn.Module) -> dict[str, int]:
    """A model's stored bytes by part: ``token_matrix`` (the input embedding and an output matrix of its own,
    dense or compressed), ``backbone`` (the weights of its ``nn.Linear`` layers, quantized or not, with their
    scales) and ``rest`` (norms, biases, position embeddings, persistent buffers...). What the state dict
    holds, each storage once: what ``save_pretrained`` writes (buffers it skips, e.g. BERT's
    ``position_ids``, are not counted)."""
    token_modules = set()
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in (embedding, output):
        if module is not None and (module is embedding or getattr(module, "weight", None) is not None):
            token_modules.update(id(m) for m in module.modules())
    parts = {"token_matrix": 0, "backbone": 0, "rest": 0}
    seen: set[int] = set()
    with scales_as_stored(model):  # the scales' bytes as the checkpoint stores them
        state = model.state_dict(keep_vars=True)
        for full_name, tensor in state.items():
            # an empty tensor stores nothing, and may point into another's storage (one loaded from a file does)
            if tensor is None or tensor.numel() == 0 or _storage_key(tensor) in seen:
                continue
            seen.add(_storage_key(tensor))
            owner, _, name = full_name.rpartition(".")
            module = model.get_submodule(owner)
            if (id(module) in token_modules and not (module is output and name == "bias")) or name == "logit_bias":
                part = "token_matrix"
            elif isinstance(module, torch.nn.Linear) and name.startswith("weight"):
                part = "backbone"  # with a quantized weight's parts (int4 packing: weight_packed, _scale, _shape)
            else:
                part = "rest"
            parts[part] += tensor_nbytes(tensor)
    return parts


@dataclass
class CompressionReport:
    """What a compression produced: plan, real size, fidelity and per-stage training statistics."""

    num_embeddings: int
    embedding_dim: int
    dense_nbytes: int
    compressed_nbytes: int
    plan: dict
    settings: dict
    fidelity: dict = field(default_factory=dict)
    stages: list = field(default_factory=list)
    joint: dict = field(default_factory=dict)
    seconds: float = 0.0
    frequency_source: str = "none"
    sensitivity: dict = field(default_factory=dict)
    end_to_end: dict = field(default_factory=dict)
    #: wall seconds of each step: ``svd``, ``stages`` (a list), ``joint``, ``fidelity``
    timings: dict = field(default_factory=dict)
    #: bytes of the whole model's tensors before and after (``None`` for a bare matrix)
    model_nbytes_before: int | None = None
    model_nbytes_after: int | None = None
    #: the whole model's bytes by part before and after (:func:`model_parts_nbytes`), and its bytes in fp32
    model_parts_before: dict = field(default_factory=dict)
    model_parts_after: dict = field(default_factory=dict)
    model_fp32_nbytes: int | None = None
    #: what became of the model's output layer (``None``: the model has none)
    output_layer: str | None = None
    #: an untied output matrix compressed on its own: its fp32 and stored bytes and its fidelity
    output_dense_nbytes: int | None = None
    output_compressed_nbytes: int | None = None
    output_fidelity: dict = field(default_factory=dict)
    #: a tied output layer's logit bias stored beside the codes (``CompressionSettings.output_bias``)
    output_bias_nbytes: int | None = None
    #: how an int4 backbone's levels were chosen, and on which calibration text (``None``: no int4 backbone)
    backbone_rounding: str | None = None

    @property
    def ratio(self) -> float:
        """fp32 bytes over stored bytes of every compressed token matrix (input, an untied output, and a
        tied output layer's logit bias)."""
        dense = self.dense_nbytes + (self.output_dense_nbytes or 0)
        stored = self.compressed_nbytes + (self.output_compressed_nbytes or 0) + (self.output_bias_nbytes or 0)
        return dense / stored

    def to_dict(self, with_history: bool = False) -> dict:
        out = dataclasses.asdict(self)
        out["ratio"] = self.ratio
        if not with_history:
            out["stages"] = [
                {k: v for k, v in s.items() if k not in ("history", "schedule")} for s in self.stages
            ]
        return out

    def summary(self) -> str:
        """Human-readable fidelity report."""
        stored = self.compressed_nbytes + (self.output_bias_nbytes or 0)
        lines = [
            f"LightToken: {self.num_embeddings:,} x {self.embedding_dim:,} embedding",
            f"  {'real ratio':<27}{self.dense_nbytes / stored:.2f}x "
            f"({fmt_size(stored)} vs "
            f"{fmt_size(self.dense_nbytes)} fp32)",
            f"  {'svd rank':<27}{self.plan['svd_rank']}",
            f"  {'hashing stages (bits)':<27}{self.plan['stage_bits']}",
            f"  {'rows per stage':<27}{self.plan['stage_rows']}",
        ]
        for key, label in FIDELITY_LABELS.items():
            if key in self.fidelity:
                lines.append(f"  {label:<27}{self.fidelity[key]:.4f}")
        for key, value in self.end_to_end.items():
            label = END_TO_END_LABELS.get(key, key.replace("_", " "))
            shown = (
                f"{value:.4f}"
                if isinstance(value, float)
                else repr(value)
                if isinstance(value, str)
                else value
            )
            lines.append(f"  {label:<27}{shown}")
        metric = (
            f"on ({self.sensitivity.get('calibration')}, shrinkage {self.sensitivity.get('shrinkage')})"
            if self.sensitivity
            else "off"
        )
        lines.append(f"  {'sensitivity metric':<27}{metric}")
        if self.joint.get("history"):
            first, last = self.joint["history"][0], self.joint["history"][-1]
            lines.append(
                f"  {'joint refinement':<27}{self.joint['iterations']} rounds, weighted error "
                f"{first['weighted_rel_error']:.4f} -> {last['weighted_rel_error']:.4f}"
            )
        if self.backbone_rounding:
            lines.append(f"  {'int4 backbone rounding':<27}{self.backbone_rounding}")
        lines.append(f"  {'compression time':<27}{self.seconds:.1f} s")
        if self.output_layer:
            lines.append(f"  {'output layer':<27}{self.output_layer}")
        if self.output_compressed_nbytes:
            lines.append(f"  {'ratio over both matrices':<27}{self.ratio:.2f}x")
        if self.output_bias_nbytes:
            lines.append(
                f"  {'output logit bias':<27}{fmt_size(self.output_bias_nbytes)} (one per token, in the ratio)"
            )
        if self.model_nbytes_before and self.model_nbytes_after:
            before, after = self.model_nbytes_before, self.model_nbytes_after
            lines.append(
                f"  {'whole model':<27}{fmt_size(before)} -> {fmt_size(after)} ({before / after:.2f}x smaller)"
            )
            if self.model_fp32_nbytes:
                fp32 = self.model_fp32_nbytes
                lines.append(f"  {'whole-model ratio':<27}{fp32 / after:.2f}x vs fp32, {fp32 / 2 / after:.2f}x vs bf16")
            if self.model_parts_after:
                parts = self.model_parts_after.items()
                shares = ", ".join(f"{name.replace('_', ' ')} {fmt_size(n)} ({n / after:.0%})" for name, n in parts)
                lines.append(f"  {'parts':<27}{shares}")
        guide = _LM_READING_GUIDE if "perplexity_increase" in self.end_to_end else _READING_GUIDE
        lines.append(f"  {'how to read it':<27}{guide}")
        return "\n".join(lines)
