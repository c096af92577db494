"""Load a model with a task head for fine-tuning: an uncompressed backbone, a LightToken checkpoint, or
an uncompressed backbone compressed on the fly.

``load_model_for_task(path, "sequence-classification", num_labels=3)`` returns ``(model, tokenizer)``:

* a dense checkpoint gives the backbone's own ``AutoModelForSequenceClassification`` (or
  ``...QuestionAnswering``) model;
* a LightToken checkpoint (``model_type == "lighttoken"``, saved from a base model or from any head)
  is loaded with the *same* Auto class: the backbone weights and the compressed embedding come from
  the checkpoint, a head it does not hold is freshly initialised (seeded);
* with ``compress_ratio=25`` a dense checkpoint is loaded with its task head and compressed with
  :func:`lighttoken_hf.compress`, which wraps it into the matching LightToken head class.

:func:`compress_to_dir` compresses a base model once and saves it, so that many fine-tuning runs
(tasks, seeds) start from the same codes without paying for the compression again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "TASK_AUTO_CLASSES",
    "compress_to_dir",
    "is_lighttoken_checkpoint",
    "load_model_for_task",
    "lora_target_modules",
]

#: Task name -> name of the transformers Auto class that builds its head.
TASK_AUTO_CLASSES: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "base": "AutoModel",
}

#: LoRA targets (attention projections) for backbones peft's own table lacks.
_EXTRA_LORA_TARGETS = {"mpnet": ["q", "v"], "distilbert": ["q_lin", "v_lin"], "albert": ["query", "value"]}


def resolve_model_path(model: str | os.PathLike[str] | None) -> str:
    if model is None:
        from ..pretrained import default_model_path

        return str(default_model_path())
    return str(model)


def _config_dict(model: str) -> dict | None:
    path = Path(model) / "config.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable JSON config: {err}") from err
    return None


def is_lighttoken_checkpoint(model: str | os.PathLike[str]) -> bool:
    """True when ``model`` (a local folder or a Hub id in the cache) is a LightToken checkpoint."""
    config = _config_dict(str(model))
    if config is not None:
        return config.get("model_type") == "lighttoken"
    from transformers import AutoConfig

    from .. import LightTokenConfig

    return isinstance(AutoConfig.from_pretrained(str(model)), LightTokenConfig)


def load_model_for_task(
    model: str | os.PathLike[str] | None = None,
    task: str = "sequence-classification",
    *,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    problem_type: str | None = None,
    compress_ratio: float | None = None,
    compress_options: dict[str, Any] | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    **from_pretrained_kwargs: Any,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` ready for fine-tuning on ``task``.

    Args:
        model: a local folder or Hub id, dense or LightToken (default: the bundled all-MiniLM-L6-v2).
        task: ``"sequence-classification"``, ``"question-answering"`` or ``"base"``.
        num_labels: classes of a sequence-classification head (1: regression).
        id2label: class names (sets ``num_labels`` and ``label2id`` too).
        problem_type: ``"regression"``, ``"single_label_classification"``...
        compress_ratio: compress a dense model with :func:`lighttoken_hf.compress` at this ratio first.
        compress_options: more :func:`lighttoken_hf.compress` options (``schedule``, ``seed``...).
        tokenizer: tokenizer folder or id, if not the model's.
        seed: seeds the new head's initialisation (same seed, same head on every process).
        progress: show the compression progress bar.
        **from_pretrained_kwargs: passed to ``from_pretrained`` (``trust_remote_code``, ``dtype``...).

    Raises:
        ValueError: unknown task, or ``compress_ratio`` given for an already compressed checkpoint.
    """
    import transformers

    from .. import compress

    if task not in TASK_AUTO_CLASSES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_AUTO_CLASSES)}")
    path = resolve_model_path(model)
    compressed = is_lighttoken_checkpoint(path)
    if compress_ratio is not None and compressed:
        raise ValueError(
            f"{path} is already LightToken-compressed; drop compress_ratio (--ratio) to fine-tune it as is, "
            "or pass the uncompressed model to compress it at another ratio"
        )
    auto_cls = getattr(transformers, TASK_AUTO_CLASSES[task])
    kwargs = dict(from_pretrained_kwargs)
    if task == "sequence-classification":
        if id2label is not None:
            id2label = {int(k): str(v) for k, v in id2label.items()}
            kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
            num_labels = num_labels or len(id2label)
        if num_labels is not None:
            kwargs["num_labels"] = num_labels
        if problem_type is not None:
            kwargs["problem_type"] = problem_type
    elif num_labels is not None or id2label is not None:
        raise ValueError(f"num_labels/id2label only apply to sequence classification, not {task!r}")
    tok = transformers.AutoTokenizer.from_pretrained(str(tokenizer or path))
    torch.manual_seed(seed)  # the fresh head's initialisation
    loaded = auto_cls.from_pretrained(path, **kwargs)
    if compress_ratio is not None:
        options = dict(compress_options or {})
        loaded = compress(loaded, ratio=compress_ratio, tokenizer=tok, progress=progress, **options)
        logger.info("compressed %s: %s", path, loaded.compression_report.summary().splitlines()[1].strip())
    return loaded, tok


def compress_to_dir(
    model: str | os.PathLike[str] | None,
    ratio: float,
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Compress a dense *base* model (``AutoModel``) once and save it (atomically) with its tokenizer.

    Any task head later loads from the folder with its Auto class
    (``load_model_for_task(out_dir, "question-answering")``). Returns the folder; an existing complete
    checkpoint is reused when ``overwrite`` is false, so concurrent or repeated runs compress once.
    """
    import transformers

    from .. import compress
    from ..saving import save_compressed

    target = Path(out_dir)
    if not overwrite and (target / "config.json").is_file() and is_lighttoken_checkpoint(target):
        return target
    path = resolve_model_path(model)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    dense = transformers.AutoModel.from_pretrained(path)
    compressed = compress(dense, ratio=ratio, tokenizer=tok, progress=progress, **options)
    return save_compressed(compressed, target, tokenizer=tok, overwrite=overwrite)


def lora_target_modules(model: Any) -> list[str]:
    """Names of the attention query/value projections of ``model``'s backbone, for ``peft.LoraConfig``.

    Looks the backbone's ``model_type`` up in peft's default table (plus MPNet, DistilBERT and
    ALBERT); raises ``ValueError`` naming the type when it is unknown (pass ``target_modules`` yourself).
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TABLE

    config = model.config
    config = getattr(config, "backbone", None) or config
    model_type = config.model_type
    targets = _EXTRA_LORA_TARGETS.get(model_type) or PEFT_TABLE.get(model_type)
    if not targets:
        raise ValueError(
            f"no default LoRA target modules for backbone type {model_type!r}; pass the names of its "
            "attention projection layers (e.g. --target-modules q_proj v_proj)"
        )
    return list(targets) if not isinstance(targets, str) else [targets]
