"""Downstream tasks for fine-tuning (an edge layer: no compression logic lives here).

* :mod:`~lighttoken_hf.tasks.glue`: GLUE task table, data loading (local files first, or ``datasets``),
  seeded train/dev split, tokenization and the official metrics with a ``Trainer`` ``compute_metrics``.
* :mod:`~lighttoken_hf.tasks.squad`: SQuAD v1.1 features with offset mapping and doc stride,
  postprocessing of start/end logits, the official EM/F1, a seeded split by article.
* :mod:`~lighttoken_hf.tasks.metrics`: accuracy, binary F1, Matthews, Pearson, Spearman.
* :mod:`~lighttoken_hf.tasks.models`: ``(model, tokenizer)`` with a task head from a dense or
  LightToken checkpoint, optionally compressed on the fly; LoRA target modules.
* :mod:`~lighttoken_hf.tasks.finetune`: ``Trainer`` runs (:func:`finetune_glue`, :func:`finetune_squad`) with
  the LightToken callback, under one :class:`FinetuneConfig` budget; :func:`prepare_model` for launchers.
* :mod:`~lighttoken_hf.tasks.distributed`: rank helpers and a parameter checksum for multi-process runs.
* :mod:`~lighttoken_hf.tasks.cli_args`: the model/training options and outputs the example scripts share.
"""

from . import distributed, finetune, glue, metrics, models, squad
from .finetune import FinetuneConfig, finetune_glue, finetune_squad, prepare_model
from .glue import GLUE_TASKS, GlueTask, get_task, glue_metrics, load_glue, make_compute_metrics, tokenize_glue
from .models import compress_to_dir, is_lighttoken_checkpoint, load_model_for_task, lora_target_modules
from .squad import (
    evaluate_squad,
    load_squad,
    postprocess_predictions,
    prepare_eval_features,
    prepare_train_features,
    squad_metrics,
)

__all__ = [
    "GLUE_TASKS",
    "FinetuneConfig",
    "finetune",
    "finetune_glue",
    "finetune_squad",
    "prepare_model",
    "GlueTask",
    "compress_to_dir",
    "distributed",
    "evaluate_squad",
    "get_task",
    "glue",
    "glue_metrics",
    "is_lighttoken_checkpoint",
    "load_glue",
    "load_model_for_task",
    "load_squad",
    "lora_target_modules",
    "make_compute_metrics",
    "metrics",
    "models",
    "postprocess_predictions",
    "prepare_eval_features",
    "prepare_train_features",
    "squad",
    "squad_metrics",
    "tokenize_glue",
]
