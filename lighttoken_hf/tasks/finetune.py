"""Fine-tuning runs with ``transformers.Trainer``: one function per task family, shared by the examples
(``examples/finetune_glue.py``, ``examples/finetune_squad.py``) and the downstream benchmark.

:func:`finetune_glue` and :func:`finetune_squad` take a model and tokenizer (see
:func:`~lighttoken_hf.tasks.models.load_model_for_task`), the raw data (a ``DatasetDict`` with
``train`` and ``validation``) and a :class:`FinetuneConfig`; they tokenize, train and evaluate, and
return ``(metrics, trainer)``. A LightToken model gets a
:class:`~lighttoken_hf.training.LightTokenCallback` with the configured embedding policy; a dense
model trains as it is, under the same budget.

Multi-process (``torchrun`` / ``accelerate launch``): every rank runs the same call; tokenization
runs on the main process first (the others reuse the ``datasets`` cache), ``Trainer`` wraps the model
in DDP (``gloo`` on CPU) and gathers evaluation outputs, so every rank returns the same metrics.
Write files on rank 0 only (:func:`~lighttoken_hf.tasks.distributed.is_main_process`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..training.ddp import skip_constant_buffers_in_ddp
from . import glue, squad
from .distributed import is_main_process, world_size
from .models import is_lighttoken_checkpoint, load_model_for_task

logger = logging.getLogger(__name__)

__all__ = [
    "FinetuneConfig",
    "finetune_glue",
    "finetune_squad",
    "model_summary",
    "prepare_model",
    "training_arguments",
]


@dataclass
class FinetuneConfig:
    """The training budget and settings of one fine-tuning run (same budget for every compared method).

    Attributes:
        output_dir: where ``Trainer`` writes checkpoints/logs (nothing else is written unless asked).
        epochs: training epochs (ignored when ``max_steps > 0``).
        max_steps: total optimizer steps (``-1``: use ``epochs``).
        batch_size: per-process training batch size.
        eval_batch_size: per-process evaluation batch size.
        learning_rate, weight_decay, warmup_ratio, gradient_accumulation_steps: the optimizer's.
        seed: ``Trainer``'s seed (data order, dropout).
        max_length: tokens per input (GLUE) or per window (SQuAD).
        embedding_policy: ``"frozen"`` or ``"decoders"`` for a LightToken model (see LightTokenCallback).
        unfreeze_at_step: with ``"frozen"``, train the decoders from this optimizer step on.
        logging_steps: log every N steps.
        save_checkpoints: save a checkpoint every epoch (default: none, only what the caller saves).
        extra_args: more ``TrainingArguments`` fields (override everything above).
    """

    output_dir: str
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.0
    gradient_accumulation_steps: int = 1
    seed: int = 42
    max_length: int = 128
    embedding_policy: str = "frozen"
    unfreeze_at_step: int | None = None
    logging_steps: int = 10
    save_checkpoints: bool = False
    extra_args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def training_arguments(config: FinetuneConfig, **overrides: Any) -> Any:
    """``transformers.TrainingArguments`` for ``config`` (CPU-friendly: gloo for multi-process CPU runs)."""
    from transformers import TrainingArguments

    kwargs: dict[str, Any] = {
        "output_dir": config.output_dir,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.eval_batch_size,
        "learning_rate": config.learning_rate,
        "weight_decay": config.weight_decay,
        "warmup_steps": float(config.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": config.logging_steps,
        "save_strategy": "epoch" if config.save_checkpoints else "no",
        "eval_strategy": "no",
        "report_to": "none",
        "dataloader_num_workers": 0,
    }
    if not torch.cuda.is_available():
        # without use_cpu, accelerate treats a CPU-only multi-process launch as NOT distributed: every
        # rank would train its own copy on its data shard, with no gradient all-reduce
        kwargs["use_cpu"] = True
        if world_size() > 1:
            kwargs["ddp_backend"] = "gloo"
    kwargs.update(config.extra_args)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def prepare_model(
    model: str | os.PathLike[str] | None,
    task: str,
    args: Any,
    *,
    ratio: float | None = None,
    compress_options: dict[str, Any] | None = None,
    seed: int = 0,
    **task_kwargs: Any,
) -> tuple[Any, Any]:
    """:func:`~lighttoken_hf.tasks.models.load_model_for_task`, safe under multi-process launchers.

    ``ratio`` compresses a dense ``model`` on the fly (it is ignored, with a log line, for a LightToken
    checkpoint). With several processes, the main process compresses once and saves the starting
    point (compressed embedding + fresh head) to ``<output_dir>/compressed-start``; the other ranks
    load it, so every rank starts from the same weights without compressing again.

    Args:
        model: folder or Hub id (``None``: the bundled all-MiniLM-L6-v2).
        task: ``"sequence-classification"`` or ``"question-answering"``.
        args: the run's ``TrainingArguments`` (for ``output_dir`` and ``main_process_first``).
        **task_kwargs: ``num_labels``, ``id2label``, ``problem_type``... for the head.
    """
    from ..saving import save_compressed
    from .models import resolve_model_path

    path = resolve_model_path(model)
    if ratio is not None and is_lighttoken_checkpoint(path):
        logger.info(
            "%s is already LightToken-compressed: fine-tuning it as is (ratio %s ignored)", path, ratio
        )
        ratio = None
    if ratio is None or world_size() == 1:
        return load_model_for_task(
            path, task, compress_ratio=ratio, compress_options=compress_options, seed=seed, **task_kwargs
        )
    start = Path(args.output_dir) / "compressed-start"
    with args.main_process_first(desc="LightToken compression"):
        if is_main_process():
            loaded, tokenizer = load_model_for_task(
                path, task, compress_ratio=ratio, compress_options=compress_options, seed=seed, **task_kwargs
            )
            save_compressed(loaded, start, tokenizer=tokenizer, overwrite=True, card=False)
        else:
            loaded, tokenizer = load_model_for_task(start, task, seed=seed, **task_kwargs)
    return loaded, tokenizer


def _unwrap(model: Any) -> Any:
    model = getattr(model, "module", model)
    base = getattr(model, "get_base_model", None)  # peft
    return base() if callable(base) else model


def _is_lighttoken(model: Any) -> bool:
    from ..core.lighttoken_codec import LightTokenEmbedding

    return any(isinstance(m, LightTokenEmbedding) for m in _unwrap(model).modules())


def model_summary(model: Any) -> dict[str, Any]:
    """Facts about the model being fine-tuned: class, parameter counts and, if compressed, its ratio."""
    inner = _unwrap(model)
    out: dict[str, Any] = {
        "model_class": type(inner).__name__,
        "parameters": sum(p.numel() for p in inner.parameters()),
        "compressed": _is_lighttoken(inner),
    }
    if out["compressed"]:
        embedding = inner.get_input_embeddings()
        out["compression_ratio"] = embedding.dense_nbytes / embedding.compressed_nbytes
        out["embedding_bytes"] = int(embedding.compressed_nbytes)
        out["dense_embedding_bytes"] = int(embedding.dense_nbytes)
    return out


def _callbacks(model: Any, config: FinetuneConfig, extra: Sequence[Any]) -> list[Any]:
    callbacks = list(extra)
    if _is_lighttoken(model):
        skip_constant_buffers_in_ddp(model)
        from ..training import LightTokenCallback

        callbacks.insert(
            0, LightTokenCallback(policy=config.embedding_policy, unfreeze_at_step=config.unfreeze_at_step)
        )
    elif config.unfreeze_at_step is not None or config.embedding_policy != "frozen":
        logger.info("embedding_policy/unfreeze_at_step only apply to LightToken models; this one is dense")
    return callbacks


def _with_label_names(args: Any, names: list[str]) -> Any:
    """Name the label inputs: ``Trainer`` otherwise reads them from ``type(model).forward``'s signature.

    A LightToken model's class-level ``forward`` is ``(*args, **kwargs)`` (the backbone's signature is
    set per instance), so ``Trainer`` would find no label names, and ``evaluate``/``predict`` would
    return neither a loss nor ``compute_metrics`` results.
    """
    if args.label_names is None:
        args.label_names = list(names)
    return args


def _main_first(args: Any, desc: str) -> Any:
    return args.main_process_first(desc=desc) if world_size() > 1 else contextlib.nullcontext()


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}


def finetune_glue(
    model: Any,
    tokenizer: Any,
    task: str | glue.GlueTask,
    data: Any,
    config: FinetuneConfig,
    *,
    report_train_loss: bool = False,
    callbacks: Sequence[Any] = (),
    args: Any = None,
) -> tuple[dict[str, Any], Any]:
    """Fine-tune on a GLUE task and evaluate on ``data["validation"]``.

    Args:
        model, tokenizer: e.g. from :func:`~lighttoken_hf.tasks.models.load_model_for_task` (a head with
            the task's ``num_labels``; 1 for STS-B).
        task: a GLUE task name or :class:`~lighttoken_hf.tasks.glue.GlueTask`.
        data: raw ``DatasetDict`` with ``train`` and ``validation`` (:func:`~lighttoken_hf.tasks.glue.load_glue`).
        config: the budget.
        report_train_loss: also measure the mean loss on the training set before and after training
            (``train_loss_before`` / ``train_loss_after``; costs two passes over the training set).
        callbacks: more ``TrainerCallback`` objects.
        args: ready ``TrainingArguments`` (default: :func:`training_arguments` of ``config``).

    Returns:
        ``(metrics, trainer)``: metrics hold the task's ``eval_*`` metrics (fractions; ``eval_score`` is
        their mean), ``train_loss``, runtimes, the sizes of the splits, :func:`model_summary` and the config.
    """
    from transformers import DataCollatorWithPadding, Trainer

    task = glue.get_task(task)
    args = _with_label_names(args or training_arguments(config), ["labels"])
    summary = model_summary(model)  # before the Trainer: LightTokenCallback upcasts fp16 storage at init
    with _main_first(args, f"tokenizing {task.name}"):
        encoded = glue.tokenize_glue(data, tokenizer, task, max_length=config.max_length)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=encoded["train"],
        eval_dataset=encoded["validation"],
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=glue.make_compute_metrics(task),
        callbacks=_callbacks(model, config, callbacks),
    )
    extra = {
        "task": task.name,
        "train_examples": len(data["train"]),
        "eval_examples": len(data["validation"]),
    }
    metrics, trainer = _train_and_report(
        trainer, encoded["train"], report_train_loss, config, {**extra, **summary}
    )
    # the callback's lighttoken/* keys describe training; after train() it has restored requires_grad
    metrics.update({k: v for k, v in trainer.evaluate().items() if not k.startswith("lighttoken/")})
    return _finite(metrics), trainer


def _train_and_report(
    trainer: Any, train_set: Any, report_train_loss: bool, config: FinetuneConfig, extra: dict
) -> tuple[dict[str, Any], Any]:
    metrics: dict[str, Any] = dict(extra)
    if report_train_loss:
        metrics["train_loss_before"] = trainer.evaluate(train_set, metric_key_prefix="train_before")[
            "train_before_loss"
        ]
    train_output = trainer.train()
    metrics.update({k: v for k, v in train_output.metrics.items() if k != "total_flos"})
    metrics["global_step"] = train_output.global_step
    if report_train_loss:
        metrics["train_loss_after"] = trainer.evaluate(train_set, metric_key_prefix="train_after")[
            "train_after_loss"
        ]
    metrics["world_size"] = world_size()
    metrics["config"] = config.to_dict()
    return metrics, trainer


def finetune_squad(
    model: Any,
    tokenizer: Any,
    data: Any,
    config: FinetuneConfig,
    *,
    doc_stride: int = 128,
    n_best: int = 20,
    max_answer_length: int = 30,
    report_train_loss: bool = False,
    callbacks: Sequence[Any] = (),
    args: Any = None,
) -> tuple[dict[str, Any], Any]:
    """Fine-tune extractive QA on SQuAD-style data and score ``data["validation"]`` with the official EM/F1.

    ``config.max_length`` is the window length (question + context piece), ``doc_stride`` the overlap
    between windows. Returns ``(metrics, trainer)`` with ``eval_exact_match`` and ``eval_f1`` (0-100),
    the numbers of examples and windows, ``train_loss`` and the rest as in :func:`finetune_glue`;
    ``trainer.squad_predictions`` holds example id -> predicted answer.
    """
    from transformers import Trainer, default_data_collator

    args = _with_label_names(args or training_arguments(config), ["start_positions", "end_positions"])
    summary = model_summary(model)  # before the Trainer: LightTokenCallback upcasts fp16 storage at init
    with _main_first(args, "SQuAD features"):
        train_features = squad.prepare_train_features(data["train"], tokenizer, config.max_length, doc_stride)
        eval_features = squad.prepare_eval_features(
            data["validation"], tokenizer, config.max_length, doc_stride
        )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_features,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=_callbacks(model, config, callbacks),
    )
    extra = {
        "task": "squad",
        "train_examples": len(data["train"]),
        "train_windows": len(train_features),
        "eval_examples": len(data["validation"]),
        "eval_windows": len(eval_features),
        "doc_stride": doc_stride,
    }
    metrics, trainer = _train_and_report(
        trainer, train_features, report_train_loss, config, {**extra, **summary}
    )
    scores, predictions = squad.evaluate_squad(
        trainer, data["validation"], eval_features, n_best, max_answer_length
    )
    metrics.update({f"eval_{k}": v for k, v in scores.items()})
    trainer.squad_predictions = predictions
    return _finite(metrics), trainer
