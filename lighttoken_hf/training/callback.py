"""Fine-tune a LightToken-compressed model with ``transformers.Trainer``: :class:`LightTokenCallback`.

The callback decides what happens to the compressed input embedding during fine-tuning:

* ``policy="frozen"`` (default): no embedding tensor changes (factors, decoders and codes are fixed);
* ``policy="decoders"``: the low-rank factors and the hashing decoders train, the codes (buffers) stay fixed;
  with int8 decoders (the default since they were introduced) the int8 weights are buffers too, so each
  decoder trains its per-bit scales and its bias;
* ``policy="frozen", unfreeze_at_step=N``: frozen for the first ``N`` optimizer steps, then ``"decoders"``.

How it hooks into ``Trainer`` (transformers 5, ``Trainer._inner_training_loop``): ``create_optimizer`` and the
DDP wrap (``accelerator.prepare``) run, and a resumed optimizer state is loaded, *before*
``on_train_begin`` fires. The callback freezes there, so every embedding parameter is already in the
optimizer's parameter groups and in DDP's reducer, and unfreezing later really updates it. A frozen parameter
gets ``requires_grad=False`` and ``grad=None``; AdamW skips parameters without a gradient, so weight decay and
momentum leave it untouched.

Design decisions (docs/finetuning.md has the longer version):

* **DDP.** Parameters that stop receiving gradients need ``find_unused_parameters=True`` (transformers'
  default for a ``PreTrainedModel`` without activation checkpointing); without it DDP's reducer waits forever
  for their gradients. The callback checks ``TrainingArguments`` when the Trainer is built and raises if the
  flag is off (or ``ddp_static_graph`` is on together with a schedule). Globally unused parameters keep
  ``grad=None`` under DDP, so the AdamW argument above holds on every rank.
* **fp16 storage.** The factors, decoder biases and scales are stored in fp16 (``factor_dtype``). AdamW updates of size
  ``lr`` are mostly rounded away on fp16 weights, so the callback upcasts them to fp32 when the Trainer is
  built (before the optimizer and the DDP wrap, whose gradient hooks are tied to the parameter's dtype) and
  casts them back to their storage dtype when training ends. While training, a ``state_dict`` hook writes
  them in their storage dtype, so every checkpoint and ``save_model`` output stores exactly the bytes that
  ``compression_stats`` counts. A resumed run restarts from the stored (fp16-rounded) weights with fp32
  optimizer moments.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, ExportableState
from transformers.training_args import ParallelMode

from ..core.lighttoken_codec import LightTokenEmbedding
from ..jsonio import write_json
from .ddp import skip_constant_buffers_in_ddp

logger = logging.getLogger(__name__)

#: Embedding policies understood by :class:`LightTokenCallback` and :func:`apply_embedding_policy`.
EMBEDDING_POLICIES: tuple[str, ...] = ("frozen", "decoders")

#: File the callback writes into every ``checkpoint-N/`` folder.
CALLBACK_STATE_FILENAME = "lighttoken_callback_state.json"

#: Prefix of the keys the callback adds to ``trainer.state.log_history``.
LOG_PREFIX = "lighttoken/"

_TRAIN_DTYPE = torch.float32
_STORAGE_ATTR = "_lighttoken_storage_dtypes"  # on a LightTokenEmbedding: parameter name -> storage dtype
_HOOK_ATTR = "_lighttoken_storage_hook"


# ---------------------------------------------------------------------------------------------- pure helpers
def lighttoken_embeddings(model: nn.Module) -> list[LightTokenEmbedding]:
    """Every :class:`LightTokenEmbedding` inside ``model`` (also through DDP / PEFT wrappers), in module order.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``model`` holds no ``LightTokenEmbedding`` (it was not compressed).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module (e.g. a PreTrainedModel), got {type(model).__name__}")
    found: dict[int, LightTokenEmbedding] = {}
    for module in model.modules():
        if isinstance(module, LightTokenEmbedding):
            found.setdefault(id(module), module)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no LightTokenEmbedding, so there is no compressed embedding to freeze or "
            "train: compress the model first with lighttoken_hf.compress(model, ratio=...) or load a LightToken "
            "checkpoint with AutoModelFor...from_pretrained(path)"
        )
    return list(found.values())


def _check_policy(policy: Any) -> str:
    if not isinstance(policy, str) or policy not in EMBEDDING_POLICIES:
        hint = " (a schedule is policy='frozen' with unfreeze_at_step=N)" if policy == "schedule" else ""
        raise ValueError(f"unknown embedding policy {policy!r}: use one of {list(EMBEDDING_POLICIES)}{hint}")
    return policy


@dataclass(frozen=True)
class EmbeddingPolicyCounts:
    """Parameter counts (elements, not tensors) after applying an embedding policy."""

    trainable_embedding_params: int
    frozen_embedding_params: int
    trainable_params: int
    total_params: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def embedding_param_counts(model: nn.Module) -> EmbeddingPolicyCounts:
    """Count the trainable and frozen parameters of ``model`` and of its compressed embedding(s)."""
    embedding_ids = {id(p) for emb in lighttoken_embeddings(model) for p in emb.parameters()}
    trainable_emb = frozen_emb = trainable = total = 0
    for p in {id(p): p for p in model.parameters()}.values():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
        if id(p) in embedding_ids:
            if p.requires_grad:
                trainable_emb += p.numel()
            else:
                frozen_emb += p.numel()
    return EmbeddingPolicyCounts(trainable_emb, frozen_emb, trainable, total)


def apply_embedding_policy(model: nn.Module, policy: str) -> EmbeddingPolicyCounts:
    """Freeze (``"frozen"``) or unfreeze (``"decoders"``) the compressed embedding's parameters in place.

    Only the :class:`LightTokenEmbedding` parameters change (``lowrank_left``, ``lowrank_right``,
    ``decoder_{s}_weight`` or, for int8 decoders, ``decoder_{s}_scale``, and ``decoder_{s}_bias``); the codes,
    int8 decoder weights, coverage masks and padding row are buffers and never train; the rest of the model is
    left as it is. A frozen parameter also loses its gradient (``grad=None``), which makes AdamW skip it (no
    weight decay, no momentum). Unfreezing drops a materialized dense cache,
    which gradients cannot flow through.

    For a custom training loop: build the optimizer over all parameters *first*, then call this (an
    optimizer built after freezing does not contain the frozen parameters, so unfreezing later would not
    train them). Under DDP, wrap the model before freezing and pass ``find_unused_parameters=True``.

    Returns:
        The parameter counts after the change.

    Raises:
        ValueError: unknown ``policy`` or no ``LightTokenEmbedding`` in ``model``.
    """
    _check_policy(policy)
    trainable = policy == "decoders"
    for emb in lighttoken_embeddings(model):
        if trainable and getattr(emb, "_cache", None) is not None:
            logger.info(
                "LightTokenCallback: dropping the materialized embedding cache (the factors now train)"
            )
            emb.materialize(False)
        for p in emb.parameters():
            p.requires_grad_(trainable)
            if not trainable:
                p.grad = None
    return embedding_param_counts(model)


def embedding_storage_stats(model: nn.Module) -> dict[str, float | int]:
    """Bytes and ratio of the compressed embedding(s) *as stored* (checkpoint bytes, storage dtypes).

    While the callback trains fp16-stored factors in fp32 the in-memory tensors are larger; this counts them
    in their storage dtype, i.e. what ``save_pretrained`` writes and ``compression_stats`` reports.

    Returns:
        ``{"embedding_bytes", "dense_embedding_bytes", "ratio"}``.
    """
    stored = dense = 0
    for emb in lighttoken_embeddings(model):
        dtypes = getattr(emb, _STORAGE_ATTR, {})
        for name, p in emb.named_parameters():
            stored += p.numel() * dtypes.get(name, p.dtype).itemsize
        stored += sum(b.numel() * b.element_size() for b in emb.buffers())
        dense += emb.dense_nbytes
    return {"embedding_bytes": stored, "dense_embedding_bytes": dense, "ratio": dense / stored}


def _cast_state_dict_to_storage(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """``state_dict`` post-hook: write upcast parameters in their storage dtype (checkpoint bytes stay true)."""
    for name, dtype in getattr(module, _STORAGE_ATTR, {}).items():
        value = state_dict.get(prefix + name)
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.dtype != dtype:
            state_dict[prefix + name] = value.to(dtype)


def upcast_embedding_storage(model: nn.Module, dtype: torch.dtype = _TRAIN_DTYPE) -> int:
    """Give the compressed embedding's low-precision (fp16/bf16) parameters a ``dtype`` (fp32) copy to train.

    The parameter objects stay the same (only ``.data`` changes), so do this *before* building the optimizer
    and before wrapping the model in DDP (DDP's gradient hooks do not survive a dtype change). The storage
    dtype is remembered: ``state_dict()`` (hence ``save_pretrained`` and Trainer checkpoints) keeps writing the
    storage dtype, and :func:`restore_embedding_storage` casts back.

    Returns:
        The number of parameters that were cast.
    """
    cast = 0
    for emb in lighttoken_embeddings(model):
        dtypes = getattr(emb, _STORAGE_ATTR, None)
        if dtypes is None:
            dtypes = {name: p.dtype for name, p in emb.named_parameters()}
            setattr(emb, _STORAGE_ATTR, dtypes)
        if getattr(emb, _HOOK_ATTR, None) is None:
            setattr(emb, _HOOK_ATTR, emb.register_state_dict_post_hook(_cast_state_dict_to_storage))
        with torch.no_grad():
            for name, p in emb.named_parameters():
                if p.dtype != dtype and dtypes[name].itemsize < dtype.itemsize and p.is_floating_point():
                    p.grad = None
                    p.data = p.data.to(dtype)
                    cast += 1
    return cast


def restore_embedding_storage(model: nn.Module) -> int:
    """Cast parameters upcast by :func:`upcast_embedding_storage` back to their storage dtype.

    Returns:
        The number of parameters that were cast.
    """
    cast = 0
    for emb in lighttoken_embeddings(model):
        dtypes = getattr(emb, _STORAGE_ATTR, {})
        with torch.no_grad():
            for name, p in emb.named_parameters():
                if name in dtypes and p.dtype != dtypes[name]:
                    p.grad = None
                    p.data = p.data.to(dtypes[name])
                    cast += 1
    return cast


def _is_upcast(model: nn.Module) -> bool:
    """True when no low-precision embedding parameter is left to upcast."""
    return all(
        not p.is_floating_point() or p.dtype.itemsize >= _TRAIN_DTYPE.itemsize
        for emb in lighttoken_embeddings(model)
        for p in emb.parameters()
    )


def _is_distributed(args: TrainingArguments) -> bool:
    return args.parallel_mode == ParallelMode.DISTRIBUTED or args.world_size > 1


# ---------------------------------------------------------------------------------------------- the callback
class LightTokenCallback(TrainerCallback, ExportableState):
    """``transformers.Trainer`` callback: embedding policy, compression logging and checkpoint statistics.

    Pass it when building the Trainer (``Trainer(..., callbacks=[LightTokenCallback()])``): it prepares the
    embedding's storage before the optimizer and the DDP wrap are built (see the module docstring).

    Args:
        policy: ``"frozen"`` (default) keeps every compressed-embedding parameter fixed; ``"decoders"`` trains
            the low-rank factors and the hashing decoders (the bit codes are buffers and never change).
        unfreeze_at_step: with ``policy="frozen"``, switch to ``"decoders"`` once ``N`` optimizer steps are
            done (steps ``N + 1, N + 2, ...`` update the embedding); ``0`` trains it from the start.
        log_every: also make the Trainer write a log record every ``log_every`` optimizer steps (in
            addition to ``logging_steps``); ``None`` adds the ``lighttoken/*`` keys to the Trainer's own
            log records only.

    Logged keys (numbers, so TensorBoard & co. plot them): ``lighttoken/ratio``,
    ``lighttoken/embedding_bytes``, ``lighttoken/dense_embedding_bytes``, ``lighttoken/trainable_params``,
    ``lighttoken/trainable_embedding_params``, ``lighttoken/embedding_trainable`` (1.0 in the ``decoders``
    phase, else 0.0).

    State (``ExportableState``, saved in ``trainer_state.json``): ``phase`` (``"frozen"``/``"decoders"``)
    and ``switched_at_step`` (global step from which the embedding trains, ``None`` if it never did). It is
    restored on ``trainer.train(resume_from_checkpoint=...)`` whether or not
    ``restore_callback_states_from_checkpoint`` is set.

    Raises:
        ValueError: unknown ``policy``, negative ``unfreeze_at_step`` / non-positive ``log_every``,
            ``unfreeze_at_step`` with ``policy="decoders"``; at Trainer start: a model without a
            ``LightTokenEmbedding``, DDP without ``find_unused_parameters``, or embedding parameters missing
            from the optimizer when they are meant to train.
        TypeError: ``unfreeze_at_step`` / ``log_every`` not an int.
    """

    def __init__(
        self, policy: str = "frozen", unfreeze_at_step: int | None = None, log_every: int | None = None
    ) -> None:
        _check_policy(policy)
        for name, value, low in (("unfreeze_at_step", unfreeze_at_step, 0), ("log_every", log_every, 1)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int or None, got {type(value).__name__} {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low} (a number of optimizer steps), got {value}")
        if unfreeze_at_step is not None and policy != "frozen":
            raise ValueError(
                f"unfreeze_at_step={unfreeze_at_step} is a schedule that starts frozen: use policy='frozen' with "
                f"it (got policy={policy!r}), or drop unfreeze_at_step to train the decoders from the start"
            )
        self.policy = policy
        self.unfreeze_at_step = unfreeze_at_step
        self.log_every = log_every
        self.phase = "frozen"
        self.switched_at_step: int | None = None
        self._requires_grad_before: dict[int, bool] = {}

    # ------------------------------------------------------------------------------------------ state
    def state(self) -> dict:
        """``ExportableState``: constructor arguments and the phase, saved in ``trainer_state.json``."""
        return {
            "args": {
                "policy": self.policy,
                "unfreeze_at_step": self.unfreeze_at_step,
                "log_every": self.log_every,
            },
            "attributes": {"phase": self.phase, "switched_at_step": self.switched_at_step},
        }

    @property
    def trains_embedding(self) -> bool:
        """True if this policy trains the embedding at some point."""
        return self.policy == "decoders" or self.unfreeze_at_step is not None

    def _target_phase(self, global_step: int) -> str:
        if self.policy == "decoders":
            return "decoders"
        if self.unfreeze_at_step is not None and global_step >= self.unfreeze_at_step:
            return "decoders"
        return "frozen"

    def _restore(self, state: TrainerState) -> None:
        """Adopt the phase saved in a resumed checkpoint's ``trainer_state.json`` (if any)."""
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0] if saved else None
        if not isinstance(saved, dict) or state.global_step == 0:
            return
        saved_args = saved.get("args", {})
        mine = self.state()["args"]
        if {k: saved_args.get(k) for k in ("policy", "unfreeze_at_step")} != {
            k: mine[k] for k in ("policy", "unfreeze_at_step")
        }:
            logger.warning(
                "LightTokenCallback: the checkpoint was trained with %s; continuing with %s from step %d",
                saved_args,
                mine,
                state.global_step,
            )
        attributes = saved.get("attributes", {})
        if attributes.get("phase") in EMBEDDING_POLICIES:
            self.phase = attributes["phase"]
        step = attributes.get("switched_at_step")
        self.switched_at_step = int(step) if isinstance(step, int) and step <= state.global_step else None

    # ------------------------------------------------------------------------------------------ helpers
    def _run_before_reporters(self) -> None:
        """Move this callback to the front of the Trainer's ``CallbackHandler``.

        Reporting integrations (TensorBoard, W&B, ...) are registered before user callbacks and read the
        ``logs`` dict in their own ``on_log``; running first lets them see the ``lighttoken/*`` keys. The
        handler is the ``self`` of the ``CallbackHandler.call_event`` frame that called this hook; moving an
        entry from index ``i`` to ``0`` while ``call_event`` iterates keeps every later entry at its index,
        so no callback is skipped or called twice. Anything unexpected leaves the order as it is.
        """
        frame = inspect.currentframe()
        try:
            caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
            handler = caller.f_locals.get("self") if caller is not None else None
        finally:
            del frame
        if not isinstance(handler, CallbackHandler):
            return
        callbacks = handler.callbacks
        index = next((i for i, cb in enumerate(callbacks) if cb is self), None)
        if index:
            callbacks.insert(0, callbacks.pop(index))

    def _check_distributed(self, args: TrainingArguments, model: nn.Module) -> None:
        if not _is_distributed(args):
            return
        find_unused = args.ddp_find_unused_parameters
        if find_unused is None:  # transformers' default (Trainer._build_accelerator_args)
            checkpointing = bool(getattr(model, "is_activation_checkpointing", False)) or bool(
                getattr(args, "activation_checkpointing", False)
                or getattr(args, "gradient_checkpointing", False)
            )
            find_unused = not checkpointing
        if self.policy == "frozen" and not find_unused:
            raise ValueError(
                "LightTokenCallback under DDP: the frozen embedding parameters receive no gradients, which needs "
                "TrainingArguments(ddp_find_unused_parameters=True) (transformers turns it off by default when "
                "activation checkpointing is on; with checkpointing also pass "
                "activation_checkpointing_kwargs={'use_reentrant': False})"
            )
        if self.unfreeze_at_step is not None and args.ddp_static_graph:
            raise ValueError(
                "LightTokenCallback: unfreeze_at_step changes which parameters receive gradients during training, "
                "which DDP's static graph does not allow: drop ddp_static_graph=True or use a fixed policy"
            )

    def _check_optimizer(self, model: nn.Module, optimizer: Any) -> None:
        if optimizer is None or not self.trains_embedding:
            return
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        missing = [
            names.get(id(p), "?")
            for emb in lighttoken_embeddings(model)
            for p in emb.parameters()
            if id(p) not in in_optimizer
        ]
        if missing:
            raise ValueError(
                f"LightTokenCallback(policy={self.policy!r}, unfreeze_at_step={self.unfreeze_at_step}) should "
                f"train the compressed embedding, but {len(missing)} of its parameters are not in the optimizer "
                f"(e.g. {missing[0]!r}): they were frozen (requires_grad=False) before the Trainer built its "
                "optimizer. Do not freeze them yourself; the callback freezes them after the optimizer is built"
            )

    def _apply_phase(self, model: nn.Module, global_step: int) -> None:
        phase = self._target_phase(global_step)
        if phase == "decoders" and (self.phase != "decoders" or self.switched_at_step is None):
            self.switched_at_step = global_step
        self.phase = phase
        apply_embedding_policy(model, phase)

    def _record(self, model: nn.Module, global_step: int) -> None:
        """Note the fine-tuning in ``config.compression_stats["fine_tuning"]`` (saved with every checkpoint)."""
        stats = getattr(getattr(model, "config", None), "compression_stats", None)
        if not isinstance(stats, dict):
            return
        steps = 0 if self.switched_at_step is None else max(0, global_step - self.switched_at_step)
        stats["fine_tuning"] = {
            "embedding_policy": self.policy,
            "unfreeze_at_step": self.unfreeze_at_step,
            "embedding_trained_from_step": self.switched_at_step,
            "embedding_update_steps": steps,
        }

    def metrics(self, model: nn.Module) -> dict[str, float | int]:
        """The ``lighttoken/*`` values the callback logs, for ``model`` as it is now."""
        stats = embedding_storage_stats(model)
        counts = embedding_param_counts(model)
        return {
            f"{LOG_PREFIX}ratio": float(stats["ratio"]),
            f"{LOG_PREFIX}embedding_bytes": int(stats["embedding_bytes"]),
            f"{LOG_PREFIX}dense_embedding_bytes": int(stats["dense_embedding_bytes"]),
            f"{LOG_PREFIX}trainable_params": counts.trainable_params,
            f"{LOG_PREFIX}trainable_embedding_params": counts.trainable_embedding_params,
            f"{LOG_PREFIX}embedding_trainable": 1.0 if self.phase == "decoders" else 0.0,
        }

    # ------------------------------------------------------------------------------------------ events
    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Validate the setup and upcast fp16 factors before the optimizer and the DDP wrap are built."""
        model = kwargs.get("model")
        if model is None:
            return
        lighttoken_embeddings(model)
        self._check_distributed(args, model)
        skip_constant_buffers_in_ddp(model)  # int16/uint8 constants: DDP must not broadcast them
        upcast_embedding_storage(model)
        self._run_before_reporters()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Apply the policy: the optimizer is built, the model wrapped and a resumed state loaded by now."""
        model = kwargs["model"]
        lighttoken_embeddings(model)
        self._restore(state)
        self._check_distributed(args, model)
        if not _is_upcast(model):
            if _is_distributed(args) and self.trains_embedding:
                raise RuntimeError(
                    "LightTokenCallback must prepare the fp16 embedding factors before the Trainer wraps the model "
                    "in DDP: pass it as Trainer(..., callbacks=[LightTokenCallback(...)]) instead of adding it "
                    "later, and use a new Trainer for another train() call"
                )
            if not _is_distributed(args):
                upcast_embedding_storage(model)
        self._check_optimizer(model, kwargs.get("optimizer"))
        self._requires_grad_before = {
            id(p): p.requires_grad for emb in lighttoken_embeddings(model) for p in emb.parameters()
        }
        self._apply_phase(model, state.global_step)
        if (
            self.unfreeze_at_step is not None
            and state.max_steps
            and self.unfreeze_at_step >= state.max_steps
            and self.phase == "frozen"
        ):
            logger.warning(
                "LightTokenCallback: unfreeze_at_step=%d is not below max_steps=%d, so the embedding stays frozen",
                self.unfreeze_at_step,
                state.max_steps,
            )
        self._record(model, state.global_step)
        self._run_before_reporters()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Switch to ``decoders`` once ``unfreeze_at_step`` optimizer steps are done."""
        model = kwargs["model"]
        if self.phase == "frozen" and self._target_phase(state.global_step) == "decoders":
            self._apply_phase(model, state.global_step)
            logger.info(
                "LightTokenCallback: the compressed embedding trains from step %d on", state.global_step
            )
            control.should_log = True
        if self.log_every is not None and state.global_step % self.log_every == 0:
            control.should_log = True
        self._record(model, state.global_step)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the ``lighttoken/*`` numbers to this log record (and to ``state.log_history``)."""
        model = kwargs.get("model")
        if model is None:
            return
        values = self.metrics(model)
        if logs is not None:
            logs.update(values)
        # Trainer.log appends a copy of ``logs`` to the history just before calling on_log
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Write ``lighttoken_callback_state.json`` (state + compression statistics) into the checkpoint."""
        model = kwargs.get("model")
        if model is None or not args.should_save:
            return
        folder = f"checkpoint-{state.global_step}"
        candidates = [os.path.join(args.output_dir, folder)]
        if state.trial_name:
            candidates.insert(0, os.path.join(args.output_dir, f"run-{state.trial_name}", folder))
        target = next((c for c in candidates if os.path.isdir(c)), None)
        if target is None:
            logger.warning(
                "LightTokenCallback: no checkpoint folder %s found; not writing its statistics", folder
            )
            return
        config = getattr(model, "config", None)
        payload = {
            "global_step": state.global_step,
            "callback": self.state(),
            "embedding": {**embedding_storage_stats(model), **embedding_param_counts(model).to_dict()},
            "compression_stats": getattr(config, "compression_stats", None),
        }
        write_json(os.path.join(target, CALLBACK_STATE_FILENAME), payload, sort_keys=True)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Leave the model as it was found: storage dtype (what ``save_model`` writes) and ``requires_grad``."""
        model = kwargs.get("model")
        if model is None:
            return
        self._record(model, state.global_step)
        restore_embedding_storage(model)
        for emb in lighttoken_embeddings(model):
            for p in emb.parameters():
                p.requires_grad_(self._requires_grad_before.get(id(p), True))
