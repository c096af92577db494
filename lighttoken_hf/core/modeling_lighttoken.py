"""Models whose input token embedding is LightToken-compressed (ships with checkpoints as remote code).

Each class builds the backbone's *own* model class for its task from the nested backbone config
(``AutoModel``, ``AutoModelForSequenceClassification``, ...) and swaps its input embedding for a
:class:`~.lighttoken_codec.LightTokenEmbedding`. Forward calls go straight to the backbone, so the
outputs are the backbone's own output types and any backbone with input embeddings works. The
checkpoint stores no dense V x d word-embedding tensor, only the compressed tensors.

The language-modelling classes (``LightTokenForMaskedLM``, ``LightTokenForCausalLM``) also replace an
output layer that was tied to the input embedding by a :class:`LightTokenLMHead`, which computes the
logits from the compressed factors; an untied (separate) output layer is kept dense as it is.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import tempfile
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    GenerationMixin,
    PretrainedConfig,
    PreTrainedModel,
)

from .configuration_lighttoken import LightTokenConfig
from .lighttoken_codec import LightTokenEmbedding


def output_embedding_from_config(config: LightTokenConfig) -> LightTokenEmbedding | None:
    """An empty :class:`LightTokenEmbedding` for a compressed untied output matrix (``None``: there is none)."""
    shapes = getattr(config, "output_embedding", None)
    if not shapes:
        return None
    return LightTokenEmbedding(
        shapes["num_embeddings"],
        shapes["embedding_dim"],
        svd_rank=shapes["svd_rank"],
        stage_bits=list(shapes["stage_bits"]),
        stage_rows=list(shapes["stage_rows"]),
        factor_dtype=getattr(torch, shapes["factor_dtype"]),
        row_index=shapes["row_index"],
        decoder_dtype=getattr(torch, shapes["decoder_dtype"]),
    )


def embedding_from_config(config: LightTokenConfig) -> LightTokenEmbedding:
    """An empty (zero) :class:`LightTokenEmbedding` with the shapes recorded in ``config``."""
    return LightTokenEmbedding(
        config.num_embeddings,
        config.embedding_dim,
        svd_rank=config.svd_rank,
        stage_bits=config.stage_bits,
        stage_rows=config.stage_rows,
        padding_idx=config.padding_idx,
        factor_dtype=getattr(torch, config.factor_dtype),
        row_index=config.row_index,
        decoder_dtype=getattr(torch, config.decoder_dtype),
        output_scale=getattr(config, "embedding_scale", 1.0),
    )


class LightTokenLMHead(nn.Module):
    """Output layer ``hidden @ W_hat^T (+ bias)`` computed from a :class:`LightTokenEmbedding`'s factors.

    Replaces a backbone output layer (``nn.Linear``, V x d) that was tied to the input embedding. With
    ``W_hat = L @ R + A @ D`` (see ``lighttoken_codec``) the logits are
    ``(hidden @ R^T) @ L^T + (hidden @ D^T) @ A^T``, where ``D`` stacks every stage's decoder weight and
    bias (``(sum B_s + S) x d``) and ``A`` holds each token's code signs (+-1) and stage-coverage flags
    (1), zero where a stage skips the token; the padding row is exact.

    ``A`` is unpacked from the packed codes one block of ``block_rows`` tokens at a time and never
    kept, so the head adds no V x d (or V x sum B_s) tensor to the model: its memory is the packed
    codes the input embedding already holds plus one block. Gradients reach the hidden states and the
    embedding's factors. After ``embedding.materialize()`` (a dense V x d cache, for inference) the
    logits are one matmul with the cached matrix instead: faster generation, dense memory.

    Args:
        embedding: the compressed matrix. Tied (``own=False``): the input embedding, kept as a plain
            reference, not a submodule, so its tensors are stored once, under the input embedding.
            Untied (``own=True``): the output layer's own compressed matrix, a submodule (``codec``).
        bias: the output layer's bias (V,), stored as a parameter, or ``None``.
        block_rows: tokens decoded per block (``None``: about 4 MB of unpacked signs per block).
        own: the head owns ``embedding`` (an untied output matrix compressed on its own).
        logit_bias: add ``logit_bias`` (V,), a parameter in the embedding's factor dtype: the compression's
            per-token correction of the mean logit error of the compressed rows (``config.output_bias``),
            part of the compressed token matrix (counted in its ratio), unlike ``bias``.
    """

    def __init__(
        self,
        embedding: LightTokenEmbedding,
        bias: torch.Tensor | None = None,
        block_rows: int | None = None,
        own: bool = False,
        logit_bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_features = embedding.embedding_dim
        self.out_features = embedding.num_embeddings
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.logit_bias = (
            nn.Parameter(torch.zeros(embedding.num_embeddings, dtype=embedding.lowrank_right.dtype))
            if logit_bias
            else None
        )
        width = sum(embedding.stage_bits) + len(embedding.stage_bits)
        self.block_rows = block_rows or max(1024, (1 << 20) // max(width, 1))
        #: at most this many positions are scored through code-byte tables (generation), more in row blocks
        self.lut_positions = 8
        self.tied = not own
        if own:
            self.codec = embedding
        else:
            self.set_embedding(embedding)

    @property
    def embedding(self) -> LightTokenEmbedding:
        return self.__dict__["_tied_embedding"] if self.tied else self.codec

    def set_embedding(self, embedding: LightTokenEmbedding) -> None:
        """Point a tied head at ``embedding`` (an untied head keeps its own matrix)."""
        if self.tied:  # not registered: its tensors belong to the input embedding
            self.__dict__["_tied_embedding"] = embedding

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        emb = self.embedding
        dtype = hidden.dtype
        compute = (
            torch.float32
            if dtype in (torch.float16, torch.bfloat16) and hidden.device.type == "cpu"
            else dtype
        )
        h = hidden.to(compute)
        if emb._cache is not None:  # materialized (``embedding.materialize()``): dense logits, faster
            return self._add_biases(h @ emb._cache.to(compute).T).to(dtype)
        stages = range(len(emb.stage_bits))
        decoders = [emb.decoder_weight(s, compute) for s in stages]
        decoders += [getattr(emb, f"decoder_{s}_bias").to(compute).unsqueeze(0) for s in stages]
        coded = h @ torch.cat(decoders).T if decoders else None
        lowrank = h @ emb.lowrank_right.to(compute).T if emb.svd_rank else None
        positions = h.numel() // h.shape[-1]
        if coded is not None and positions <= self.lut_positions:  # generation: a few positions at a time
            logits = self._coded_logits_by_table(coded.reshape(positions, -1)).view(*h.shape[:-1], -1)
            if lowrank is not None:
                logits = logits + lowrank @ emb.lowrank_left.to(compute).T
            return self._finish(logits, h, dtype)
        blocks = []
        for start in range(0, emb.num_embeddings, self.block_rows):
            ids = torch.arange(start, min(start + self.block_rows, emb.num_embeddings), device=h.device)
            block = h.new_zeros(*h.shape[:-1], ids.numel())
            if lowrank is not None:
                block = block + lowrank @ emb.lowrank_left.index_select(0, ids).to(compute).T
            if coded is not None:
                block = block + coded @ emb.code_signs(ids, compute).T
            blocks.append(block)
        return self._finish(torch.cat(blocks, dim=-1), h, dtype)

    def _finish(self, logits: torch.Tensor, h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        emb = self.embedding
        if emb.padding_idx is not None:  # the padding row is stored exactly, not in the factors
            pad = torch.tensor([emb.padding_idx], device=h.device)
            logits = logits.index_copy(-1, pad, (h @ emb.padding_row.to(h.dtype)).unsqueeze(-1))
        return self._add_biases(logits).to(dtype)

    def _add_biases(self, logits: torch.Tensor) -> torch.Tensor:
        for bias in (self.bias, self.logit_bias):
            if bias is not None:
                logits = logits + bias.to(logits.dtype)
        return logits

    def _coded_logits_by_table(self, coded: torch.Tensor) -> torch.Tensor:
        """The hashing stages' logits for a few positions, read from the packed code bytes through tables.

        ``coded`` (N x (sum B_s + S)) holds the hidden states projected on every code bit's decoder row,
        then on each stage's bias. For each code byte a 256-entry table of its bit patterns' sums is built
        per position; a token's logit is then the sum of its code bytes' table entries, with no sign matrix
        unpacked (the lookup-table scoring of product quantization).
        """
        emb = self.embedding
        n, vocab = coded.shape[0], emb.num_embeddings
        table = emb.sign_table(coded.dtype, coded.device)  # (256, 8): bit k of byte b as -1/+1
        ids = torch.arange(vocab, device=coded.device)
        total, offset = sum(emb.stage_bits), 0
        logits = coded.new_zeros(n, vocab)
        for s, bits in enumerate(emb.stage_bits):
            codes = getattr(emb, f"codes_{s}")
            nbytes = codes.shape[1]
            proj = nn.functional.pad(coded[:, offset : offset + bits], (0, nbytes * 8 - bits))
            offset += bits
            sums = proj.view(n, nbytes, 8) @ table.T  # (n, nbytes, 256)
            values = coded[:, total + s].unsqueeze(1).expand(n, codes.shape[0])
            for j in range(nbytes):
                values = values + sums[:, j].index_select(1, codes[:, j].long())
            inside, row = emb.stage_index(s, ids)
            if emb.stage_rows[s] == vocab:
                logits = logits + values
            else:
                logits = logits + values.index_select(1, row) * inside.to(values.dtype)
        return logits

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"logit_bias={self.logit_bias is not None}"
        )


#: ``from_pretrained`` keyword arguments that locate files (passed on when the config is read early).
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def _config_of(path: Any, kwargs: dict[str, Any]) -> LightTokenConfig | None:
    """The ``config=`` passed to ``from_pretrained``, else the checkpoint's own (``None`` if unreadable)."""
    config = kwargs.get("config")
    if isinstance(config, LightTokenConfig):
        return config
    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    try:
        return LightTokenConfig.from_pretrained(path, **hub)
    except Exception:  # noqa: BLE001 - from_pretrained itself reports an unloadable config
        return None


#: ``LightTokenEmbedding.layout()`` keys whose ``LightTokenConfig`` field has another name.
_CONFIG_FIELD = {"output_scale": "embedding_scale"}


def _check_saved_layout(config: LightTokenConfig) -> None:
    """Refuse a config.json whose compressed-embedding fields differ from those it was saved with.

    ``save_pretrained`` records each compressed module's ``layout()`` beside its checksums; an edited
    field (a moved ``padding_idx``, emptied ``stage_bits``...) would build a module that reads the same
    weights wrongly, so it is named here, before any weight is loaded.
    """
    recorded = getattr(config, "checksums", None) or {}
    current = {"input": config.to_dict(), "output": dict(getattr(config, "output_embedding", None) or {})}
    for role, fields in current.items():
        expected = recorded.get(f"{role}_layout") or {}
        changed = [
            f"{_CONFIG_FIELD.get(k, k)} is {fields.get(_CONFIG_FIELD.get(k, k))!r}, saved as {v!r}"
            for k, v in expected.items()
            if _CONFIG_FIELD.get(k, k) in fields and fields[_CONFIG_FIELD.get(k, k)] != v
        ]
        if changed:
            raise ValueError(
                f"config.json's {role} embedding fields differ from those the checkpoint was saved with "
                f"({'; '.join(changed)}): config.json was edited. Restore those values (the weights file "
                "matches them) or save the checkpoint again."
            )


def _weights_files(path: Any) -> str:
    """The weight file(s) of checkpoint ``path``, for error messages."""
    path = str(path)
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith((".safetensors", ".safetensors.index.json")))
        return ", ".join(os.path.join(path, n) for n in names) or path
    return f"model.safetensors of {path!r}"


#: Hidden folders of a save in progress beside its destination ``name``: ``.{name}.tmp-{pid}-{random}`` (the
#: files being written) and ``.{name}.old-{pid}-{random}`` (a checkpoint being replaced, kept until the new
#: one is in place).
STAGING_FOLDER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # Windows: os.kill would end the process, so never guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def recover_interrupted_saves(target: str | os.PathLike[str]) -> list[str]:
    """Clean up after saves to ``target`` whose process died (``kill -9``, power loss); returns what was done.

    A staging folder is stale when the process its name records has exited. A stale ``.tmp-`` folder is
    removed. A stale ``.old-`` folder holds the previous checkpoint of an interrupted overwrite: it is moved
    back when ``target`` is missing, and removed when the new checkpoint is in place. Nothing else is touched.
    """
    target = os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    done: list[str] = []
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return done
    for entry in entries:
        match = STAGING_FOLDER.match(entry)
        path = os.path.join(parent, entry)
        if match is None or os.path.islink(path) or not os.path.isdir(path):
            continue
        owner = match["name"]
        while owner != name and STAGING_FOLDER.match(owner):  # a save staged inside another save's staging
            owner = STAGING_FOLDER.match(owner)["name"]
        if owner != name:
            continue
        if _pid_alive(int(match["pid"])):
            continue
        old = os.path.join(path, name)
        if match["kind"] == "old" and os.path.isdir(old) and not os.path.lexists(target):
            os.rename(old, target)
            done.append(f"restored the previous {target} from an interrupted overwrite ({entry})")
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            done.append(f"removed {entry}, left by an interrupted save")
    return done


def _apply_umask(folder: str) -> None:
    """Give ``folder`` and the files in it the modes of ordinary new files (some writers use 0600 temp files)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            os.chmod(path, 0o666 & ~mask)


def _move_into_place(staging: str, target: str) -> None:
    """Move the saved files in ``staging`` to ``target``: one rename if ``target`` is new or empty.

    Into a folder that already holds files (a tokenizer saved first, an older checkpoint), the files are
    moved one by one with ``config.json`` last, after the old ``config.json`` and any weight file that the
    new save does not replace are deleted; until the move ends the folder has no config and loads as nothing.
    """
    if not os.path.isdir(target) or not os.listdir(target):
        try:
            os.replace(staging, target)
            return
        except OSError:
            if not os.path.isdir(target):
                raise
    names = sorted(os.listdir(staging), key=lambda n: n == "config.json")
    if os.path.lexists(os.path.join(target, "config.json")):
        os.unlink(os.path.join(target, "config.json"))
    for old in os.listdir(target):
        weights = old.endswith(".safetensors") or old.endswith(".safetensors.index.json")
        if weights and old.startswith("model") and old not in names:
            os.unlink(os.path.join(target, old))
    for new in names:
        os.replace(os.path.join(staging, new), os.path.join(target, new))


@contextlib.contextmanager
def scales_as_stored(model: nn.Module) -> Iterator[None]:
    """Within the block, each quantized layer's ``weight_scale`` is in the dtype its quantization scheme
    names (``scale_dtype``, e.g. fp16 for lighttoken_hf's int4), as the checkpoint stores it; afterwards in the
    dtype it had. compressed-tensors makes the scales in the weights' dtype when it loads or packs a layer,
    and unpacks into the scales' dtype, so the model runs with them as they were."""
    cast: list[tuple[torch.Tensor, torch.Tensor]] = []
    for module in model.modules():
        scale = getattr(module, "weight_scale", None)
        dtype = getattr(getattr(getattr(module, "quantization_scheme", None), "weights", None), "scale_dtype", None)
        if isinstance(scale, torch.Tensor) and isinstance(dtype, torch.dtype) and scale.dtype != dtype:
            cast.append((scale, scale.data))
            scale.data = scale.data.to(dtype)
    try:
        yield
    finally:
        for scale, data in cast:
            scale.data = data


def _run_backbone(self: LightTokenPreTrainedModel, *args: Any, **kwargs: Any) -> Any:
    return self._call_backbone(*args, **kwargs)


class LightTokenPreTrainedModel(PreTrainedModel):
    """Shared machinery: build the backbone for ``backbone_auto_class`` and swap in the compressed embedding."""

    config_class = LightTokenConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    backbone_auto_class: Any = AutoModel
    #: Trainer passes ``num_items_in_batch`` only if this is True. The backbones' classification, QA and
    #: masked-LM heads ignore it and average each micro-batch, so Trainer must divide by the accumulation
    #: steps itself; the causal-LM losses (``self.loss_function``) use it (``LightTokenForCausalLM``).
    accepts_loss_kwargs = False

    def __init__(self, config: LightTokenConfig, backbone: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        # pipelines read the labels from the outer config
        self.config.id2label, self.config.label2id = config.backbone.id2label, config.backbone.label2id
        from_backbone = backbone is not None
        if backbone is None:
            backbone = self.backbone_auto_class.from_config(config.backbone)
        self.backbone = backbone
        embedding = embedding_from_config(config)
        # from_pretrained(dtype=...) sets the default dtype while building: follow it
        embedding.output_dtype = torch.get_default_dtype()
        self._setup_output_layer(config, from_backbone, embedding)
        self.set_input_embeddings(embedding)
        self._expose_backbone_signature()
        self.post_init()

    def _setup_output_layer(
        self, config: LightTokenConfig, from_backbone: bool, embedding: LightTokenEmbedding
    ) -> None:
        """Hook for the LM classes, called before ``embedding`` replaces the backbone's input embedding."""

    def _expose_backbone_signature(self) -> None:
        """Give ``forward`` the backbone's own signature.

        ``Trainer`` (``remove_unused_columns``), pipelines and PEFT inspect ``model.forward`` to decide
        which inputs to pass; a bare ``*args, **kwargs`` would make them drop every column.
        """
        signature = inspect.signature(self.backbone.forward)
        self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        fn = types.FunctionType(_run_backbone.__code__, _run_backbone.__globals__, "forward")
        fn.__signature__ = signature.replace(parameters=[self_param, *signature.parameters.values()])
        fn.__doc__ = type(self).forward.__doc__
        self.forward = types.MethodType(fn, self)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained``, but a missing, misshapen or unreadable compressed tensor is an error.

        transformers only warns about missing tensors (leaving them uninitialised) and reports a size
        mismatch without naming it; a compressed embedding with either is garbage, so this raises an
        ``OSError`` (missing, unreadable) or ``ValueError`` (wrong shape) naming the tensor and the file.
        """
        want_info = kwargs.pop("output_loading_info", False)
        ignore_sizes = kwargs.pop("ignore_mismatched_sizes", False)
        files = _weights_files(pretrained_model_name_or_path)
        config = _config_of(pretrained_model_name_or_path, kwargs)
        if config is not None:
            _check_saved_layout(config)
        mapping = cls._head_key_mapping(config)
        if mapping:
            kwargs["key_mapping"] = {**mapping, **(kwargs.get("key_mapping") or {})}
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path,
                *args,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                **kwargs,
            )
        except Exception as err:
            if type(err).__name__ != "SafetensorError":
                raise
            raise OSError(
                f"cannot read the LightToken checkpoint weights in {files}: {err}. The file is truncated or "
                "corrupted (e.g. an interrupted download or copy): download or save the checkpoint again."
            ) from err
        if mapping:  # saving must not undo the renaming: a head model saves with its own key layout
            model._weight_conversions = [
                conversion
                for conversion in getattr(model, "_weight_conversions", None) or []
                if not set(mapping) & set(getattr(conversion, "_original_source_patterns", ()))
            ]
        prefixes = [n + "." for n, m in model.named_modules() if isinstance(m, LightTokenEmbedding)]
        for key in sorted(info["unexpected_keys"]):
            if key.startswith(tuple(prefixes)):
                raise ValueError(
                    f"the LightToken checkpoint {files} has a tensor {key!r} that config.json's compressed-"
                    "embedding fields (stage_bits, stage_rows, svd_rank, padding_idx, row_index, decoder_dtype) "
                    "do not describe: config.json was edited or comes from another compression."
                )
        # saved from this very class, every tensor must be there (another class may add a fresh task head)
        same_class = cls.__name__ in (getattr(config, "architectures", None) or [])
        for key in sorted(info["missing_keys"]):
            if key.startswith(tuple(prefixes)):
                raise OSError(
                    f"the LightToken checkpoint {files} has no tensor {key!r}, which the compressed embedding "
                    "needs: the file is incomplete or was not saved from this model; save it again."
                )
            if same_class:
                raise OSError(
                    f"the LightToken checkpoint {files} has no tensor {key!r}, which its {cls.__name__} needs "
                    "(it would be randomly initialised): the file is incomplete or was edited; save or download "
                    "it again."
                )
        for key, ckpt_shape, model_shape in info["mismatched_keys"]:
            where = f"tensor {key!r} in {files} has shape {tuple(ckpt_shape)}, config.json says {tuple(model_shape)}"
            if key.startswith(tuple(prefixes)):
                raise ValueError(
                    f"LightToken checkpoint: {where}; the weights and config.json come from different "
                    "compressions (or the file was edited): save the checkpoint again."
                )
            if not ignore_sizes:
                raise RuntimeError(
                    f"size mismatch: {where}; pass ignore_mismatched_sizes=True to re-initialise it."
                )
        model._verify_checksums(files)
        return (model, info) if want_info else model

    def compressed_embeddings(self) -> dict[str, tuple[str, LightTokenEmbedding]]:
        """``{"input": (name, module)}``, plus ``"output"`` for an untied output matrix compressed on its own."""
        found = {}
        for name, module in self.named_modules():
            if isinstance(module, LightTokenLMHead) and not module.tied:
                found["output"] = (f"{name}.codec", module.codec)
            elif isinstance(module, LightTokenEmbedding) and not name.endswith(".codec"):
                found["input"] = (name, module)
        return found

    def _verify_checksums(self, files: str) -> None:
        """Compare every compressed tensor with the checksum ``config.json`` recorded when it was saved."""
        recorded = getattr(self.config, "checksums", None) or {}
        for role, (name, module) in self.compressed_embeddings().items():
            expected = recorded.get(role)
            if expected is None:  # saved before checksums existed
                continue
            actual = module.checksums()
            bad = sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
            if bad:
                tensors = ", ".join(repr(f"{name}.{k}") for k in bad)
                raise ValueError(
                    f"LightToken checkpoint {files}: the tensor(s) {tensors} differ from the checksums that "
                    "config.json recorded when the checkpoint was saved. The weights file is corrupted (an "
                    "interrupted or damaged download or copy) or was edited, and would give wrong outputs: "
                    "download or save the checkpoint again."
                )

    @classmethod
    def _head_key_mapping(cls, config: LightTokenConfig | None) -> dict[str, str]:
        """Checkpoint key renaming between a base-model and a task-head checkpoint of the same backbone.

        A ``LightTokenModel`` checkpoint stores ``backbone.<layers>`` while a task class's backbone (e.g.
        ``BertForSequenceClassification``) keeps them under its base-model prefix,
        ``backbone.bert.<layers>``. Loading one into the other (``AutoModelForSequenceClassification
        .from_pretrained(base_checkpoint, num_labels=3)``: backbone and compressed embedding loaded, fresh
        head) needs that prefix added or stripped; keys already in the model's layout are left alone.
        """
        if not isinstance(getattr(config, "backbone", None), PretrainedConfig):
            return {}
        try:
            found = cls.backbone_auto_class._model_mapping[type(config.backbone)]
        except (KeyError, AttributeError):
            return {}
        backbone_cls = found[0] if isinstance(found, (list, tuple)) else found
        prefix = getattr(backbone_cls, "base_model_prefix", "")
        if not prefix:
            return {}
        p = re.escape(prefix)
        if cls.backbone_auto_class is AutoModel:  # a head checkpoint into the base model: strip the prefix
            return {rf"^backbone\.{p}\.(.+)": r"backbone.\1"}
        return {rf"^backbone\.(?:(?!{p}\.))(.+)": rf"backbone.{prefix}.\1"}

    def get_input_embeddings(self) -> LightTokenEmbedding:
        return self.backbone.get_input_embeddings()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in: that of its first floating-point parameter, quantized layers'
        scales left out (``save_pretrained`` writes it to ``config.json``, which ``from_pretrained`` follows;
        while :func:`scales_as_stored` holds the scales in fp16, a decoder whose first layer is quantized would
        otherwise read as fp16 and load as fp16)."""
        scales = {id(getattr(module, "weight_scale", None)) for module in self.modules()}
        floats = (p.dtype for p in self.parameters() if p.is_floating_point() and id(p) not in scales)
        return next(floats, torch.get_default_dtype())

    def set_input_embeddings(self, value: torch.nn.Module) -> None:
        self.backbone.set_input_embeddings(value)
        self._register_embedding_last(value)
        head = self.backbone.get_output_embeddings()
        if isinstance(head, LightTokenLMHead):
            head.set_embedding(value)

    def _register_embedding_last(self, embedding: torch.nn.Module) -> None:
        """Move ``embedding`` to the end of its parent's submodules, so it is not the first parameter.

        Code reads a model's dtype from its first floating-point parameter (``PreTrainedModel.dtype``, of
        this model and of the backbone; sentence-transformers' ``SentenceTransformer.dtype``, which also
        casts the modules after the transformer to it). The input embedding usually comes first, and its
        first parameter is an fp16 storage factor, not the compute dtype. This one reordering is the whole
        fix: only the order of iteration changes; names and state-dict keys stay the same.
        """
        for module in self.backbone.modules():
            name = next((n for n, child in module._modules.items() if child is embedding), None)
            if name is not None:
                module._modules[name] = module._modules.pop(name)  # re-inserted at the end
                return

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the backbone (same arguments and outputs as the uncompressed model)."""
        return self._call_backbone(*args, **kwargs)

    def _call_backbone(self, *args: Any, **kwargs: Any) -> Any:
        return self.backbone(*args, **kwargs)

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.save_pretrained``, with an ``auto_map`` entry for *every* task class.

        transformers records only the saved class; listing every head lets a base checkpoint load into
        any task head by remote code, e.g. ``AutoModelForSequenceClassification.from_pretrained(repo,
        trust_remote_code=True)`` where lighttoken_hf is not installed.

        The save is atomic: the files are written into a hidden sibling folder and moved into place when
        complete (``config.json`` last), so an interrupted save never leaves a loadable-looking checkpoint
        with missing weights; stale folders of saves whose process died are cleaned up first (see
        :func:`recover_interrupted_saves`). Files get the modes of the user's umask.
        """
        # A backbone loaded with packed weights (compressed-tensors, e.g. int4) unpacks them on its first
        # forward: pack them again, so that the files keep the packed form (not while they are still packed).
        compressor = getattr(getattr(self, "hf_quantizer", None), "compressor", None)
        packed = any(hasattr(module, "weight_packed") for module in self.modules())
        if compressor is not None and hasattr(compressor, "compress_model") and not packed:
            compressor.compress_model(self)
        module = type(self).__module__.rsplit(".", 1)[-1]
        auto_map = dict(getattr(self.config, "auto_map", None) or {})
        for auto_cls, model_cls in LIGHTTOKEN_CLASSES:
            auto_map[auto_cls.__name__] = f"{module}.{model_cls.__name__}"
        self.config.auto_map = auto_map
        self.config.checksums = {}
        for role, (_, module) in self.compressed_embeddings().items():
            self.config.checksums[role] = module.checksums()
            self.config.checksums[f"{role}_layout"] = module.layout()
        if not kwargs.get("is_main_process", True) or os.path.isfile(os.fspath(save_directory)):
            return super().save_pretrained(save_directory, *args, **kwargs)  # writes nothing
        # Written into a hidden sibling folder, then moved into place: an interrupted save never leaves
        # a config.json beside missing or partial weights.
        target = os.path.abspath(os.path.expanduser(os.fspath(save_directory)))
        parent, name = os.path.split(target)
        os.makedirs(parent, exist_ok=True)
        recover_interrupted_saves(target)
        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", name)
        staging = tempfile.mkdtemp(prefix=f".{name}.tmp-{os.getpid()}-", dir=parent)
        try:
            with scales_as_stored(self):
                result = super().save_pretrained(staging, *args, **kwargs)
            _apply_umask(staging)
            _move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return result

    def resize_token_embeddings(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "resize_token_embeddings is not supported on a LightToken-compressed model: its codes are fixed. "
            "Resize the uncompressed model first, then compress it again with lighttoken_hf.compress()."
        )


class LightTokenModel(LightTokenPreTrainedModel):
    """Base model (hidden states), like ``AutoModel``."""

    backbone_auto_class = AutoModel


class LightTokenForSequenceClassification(LightTokenPreTrainedModel):
    """Sequence classification / regression head, like ``AutoModelForSequenceClassification``."""

    backbone_auto_class = AutoModelForSequenceClassification

    def forward(self, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        """Run the backbone's sequence-classification model (instances expose the backbone's own signature).

        The class-level signature names the label input, which ``Trainer`` looks up on the class.
        """
        return self._call_backbone(*args, labels=labels, **kwargs)


def _call_with_token_loss(
    model: LightTokenPreTrainedModel, args: tuple, kwargs: dict, num_items_in_batch: Any
) -> Any:
    """Run the backbone; given ``num_items_in_batch``, the loss is (sum of token losses) / it.

    Under gradient accumulation ``Trainer`` passes ``num_items_in_batch``: the labelled tokens (labels
    ``!= -100``) of all micro-batches of the optimizer step. The backbones' own token-level losses
    (token classification, masked LM) ignore it and average each micro-batch, which weights a token of
    a micro-batch with few labels more than one of a micro-batch with many. Summing the per-token
    cross-entropy and dividing by ``num_items_in_batch`` gives every labelled token the same weight,
    exactly as in one large batch.
    """
    labels = kwargs.get("labels")
    if num_items_in_batch is None or labels is None:
        return model.backbone(*args, **kwargs)
    kwargs["labels"] = None
    out = model.backbone(*args, **kwargs)
    logits = out[0]
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"cannot compute the loss over num_items_in_batch: logits of shape {tuple(logits.shape)} do not "
            f"give one prediction per label (labels of shape {tuple(labels.shape)})"
        )
    loss = nn.functional.cross_entropy(
        logits.flatten(0, -2).float(),
        labels.flatten().to(logits.device),
        ignore_index=-100,
        reduction="sum",
    )
    loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
    return (loss, *out) if isinstance(out, tuple) else type(out)(loss=loss, **out)


class LightTokenForTokenClassification(LightTokenPreTrainedModel):
    """Token classification head, like ``AutoModelForTokenClassification``.

    With gradient accumulation ``Trainer`` passes ``num_items_in_batch``; the loss is then computed here
    as the sum over labelled tokens / ``num_items_in_batch`` (see :func:`_call_with_token_loss`).
    """

    backbone_auto_class = AutoModelForTokenClassification
    accepts_loss_kwargs = True

    def forward(self, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        """Run the backbone's token-classification model (instances expose the backbone's own signature).

        The class-level signature names the label input, which ``Trainer`` looks up on the class.
        """
        return self._call_backbone(*args, labels=labels, **kwargs)

    def _call_backbone(self, *args: Any, num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        return _call_with_token_loss(self, args, kwargs, num_items_in_batch)


class LightTokenForQuestionAnswering(LightTokenPreTrainedModel):
    """Extractive question answering head, like ``AutoModelForQuestionAnswering``."""

    backbone_auto_class = AutoModelForQuestionAnswering

    def forward(
        self, *args: Any, start_positions: Any = None, end_positions: Any = None, **kwargs: Any
    ) -> Any:
        """Run the backbone's question-answering model (instances expose the backbone's own signature).

        The class-level signature names the label inputs, which ``Trainer`` looks up on the class.
        """
        return self._call_backbone(
            *args, start_positions=start_positions, end_positions=end_positions, **kwargs
        )


class LightTokenForMultipleChoice(LightTokenPreTrainedModel):
    """Multiple choice head, like ``AutoModelForMultipleChoice``."""

    backbone_auto_class = AutoModelForMultipleChoice

    def forward(self, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        """Run the backbone's multiple-choice model (instances expose the backbone's own signature).

        The class-level signature names the label input, which ``Trainer`` looks up on the class.
        """
        return self._call_backbone(*args, labels=labels, **kwargs)


class _LightTokenLMModel(LightTokenPreTrainedModel):
    """Language-modelling head: a tied output layer computes its logits from the compressed embedding.

    ``config.compressed_lm_head`` records the choice: ``True`` when the uncompressed model's output
    layer was tied to its input embedding (it becomes a :class:`LightTokenLMHead`, keeping its bias),
    ``False`` when it had separate weights: then ``config.output_embedding`` holds the shapes of that
    matrix compressed on its own (a :class:`LightTokenLMHead` that owns it), or ``None`` (kept dense).
    Either way the backbone's
    ``tie_word_embeddings`` is switched off, so ``tie_weights`` never ties to the compressed embedding
    (whose ``weight`` is a decoded tensor, not a parameter).
    """

    def _setup_output_layer(
        self, config: LightTokenConfig, from_backbone: bool, embedding: LightTokenEmbedding
    ) -> None:
        output = self.backbone.get_output_embeddings()
        if from_backbone:  # compressing: is the dense output layer tied to the input embedding?
            weight = getattr(output, "weight", None)
            config.compressed_lm_head = (
                weight is not None and weight is self.backbone.get_input_embeddings().weight
            )
        config.backbone.tie_word_embeddings = False
        self.backbone.all_tied_weights_keys = self.backbone.get_expanded_tied_weights_keys(all_submodels=True)
        own = output_embedding_from_config(config)
        if not getattr(config, "compressed_lm_head", False) and own is None:
            return
        if not isinstance(output, nn.Linear):
            raise ValueError(f"expected an nn.Linear output layer, got {type(output).__name__}")
        name = next(n for n, m in self.backbone.named_modules() if m is output)
        parent, _, attr = name.rpartition(".")
        if own is not None:  # an untied output matrix, compressed on its own
            head = LightTokenLMHead(own, output.bias, own=True)
        else:
            head = LightTokenLMHead(embedding, output.bias, logit_bias=getattr(config, "output_bias", False))
        setattr(self.backbone.get_submodule(parent), attr, head)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.backbone.get_output_embeddings()


class LightTokenForMaskedLM(_LightTokenLMModel):
    """Masked language modelling head, like ``AutoModelForMaskedLM``.

    With gradient accumulation ``Trainer`` passes ``num_items_in_batch`` (the masked tokens of all
    micro-batches); the loss is then the sum over masked tokens / ``num_items_in_batch`` (see
    :func:`_call_with_token_loss`), so it equals the loss of one large batch.
    """

    backbone_auto_class = AutoModelForMaskedLM
    accepts_loss_kwargs = True

    def forward(self, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        """Run the backbone's masked-LM model (instances expose the backbone's own signature).

        The class-level signature names the label input, which ``Trainer`` looks up on the class.
        """
        return self._call_backbone(*args, labels=labels, **kwargs)

    def _call_backbone(self, *args: Any, num_items_in_batch: Any = None, **kwargs: Any) -> Any:
        return _call_with_token_loss(self, args, kwargs, num_items_in_batch)


class LightTokenForCausalLM(_LightTokenLMModel, GenerationMixin):
    """Causal language modelling head, like ``AutoModelForCausalLM``, with ``generate()``.

    ``generate`` is transformers' own (``GenerationMixin``); the generation config comes from the
    backbone's config (``LightTokenConfig.get_text_config``), and the model-specific steps -- building
    the inputs of each step, updating them between steps and creating the KV cache -- are the
    backbone's, so a backbone that customises them keeps its behaviour.
    """

    backbone_auto_class = AutoModelForCausalLM
    accepts_loss_kwargs = True  # transformers' causal-LM losses divide by ``num_items_in_batch``

    def forward(self, *args: Any, labels: Any = None, **kwargs: Any) -> Any:
        """Run the backbone's causal-LM model (instances expose the backbone's own signature).

        The class-level signature names the label input, which ``Trainer`` looks up on the class.
        """
        return self._call_backbone(*args, labels=labels, **kwargs)

    @property
    def _is_stateful(self) -> bool:
        return getattr(self.backbone, "_is_stateful", False)

    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict:
        """The backbone's ``prepare_inputs_for_generation``."""
        return self.backbone.prepare_inputs_for_generation(*args, **kwargs)

    def _update_model_kwargs_for_generation(self, *args: Any, **kwargs: Any) -> dict:
        return self.backbone._update_model_kwargs_for_generation(*args, **kwargs)

    def _prepare_cache_for_generation(self, *args: Any, **kwargs: Any) -> Any:
        return self.backbone._prepare_cache_for_generation(*args, **kwargs)


#: (backbone Auto class, LightToken class) pairs, most specific first.
LIGHTTOKEN_CLASSES: tuple[tuple[Any, type[LightTokenPreTrainedModel]], ...] = (
    (AutoModelForSequenceClassification, LightTokenForSequenceClassification),
    (AutoModelForTokenClassification, LightTokenForTokenClassification),
    (AutoModelForQuestionAnswering, LightTokenForQuestionAnswering),
    (AutoModelForMultipleChoice, LightTokenForMultipleChoice),
    (AutoModelForMaskedLM, LightTokenForMaskedLM),
    (AutoModelForCausalLM, LightTokenForCausalLM),
    (AutoModel, LightTokenModel),
)
