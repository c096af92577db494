"""Command-line pieces the fine-tuning examples share: the model and training options, the
:class:`~lighttoken_hf.tasks.finetune.FinetuneConfig` they describe, and the run's outputs.

``examples/finetune_glue.py`` and ``examples/finetune_squad.py`` add their data options and call
:func:`add_model_arguments` / :func:`add_training_arguments`, so both scripts take the same ``--model``,
``--ratio``, ``--embedding-policy``, ``--learning-rate``... with the same meaning.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .finetune import FinetuneConfig

__all__ = [
    "DEFAULT_DATA_DIR",
    "add_model_arguments",
    "add_training_arguments",
    "compress_options",
    "default_data_dir",
    "finetune_config",
    "local_data_dir",
    "write_run_outputs",
]

#: ``../shared/data`` beside a repository checkout (the examples' default ``--data-dir``).
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def default_data_dir() -> str:
    """``$LIGHTTOKEN_DATA_DIR`` or ``../shared/data`` beside the checkout."""
    return os.environ.get("LIGHTTOKEN_DATA_DIR", str(DEFAULT_DATA_DIR))


def local_data_dir(data_dir: str | None) -> str | None:
    """``data_dir`` when it exists (local files first), else ``None`` (fall back to ``--dataset``)."""
    return data_dir if data_dir and Path(data_dir).exists() else None


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--ratio``, ``--compress-epochs``, ``--compress-seed``, ``--embedding-policy``,
    ``--unfreeze-at-step`` (group "model")."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model", default=None, help="dense or LightToken checkpoint (default: bundled MiniLM)"
    )
    model.add_argument(
        "--ratio", type=float, default=25.0, help="compress a dense model at this ratio; 0 = no"
    )
    model.add_argument("--compress-epochs", type=int, default=None, help="max epochs per hashing stage")
    model.add_argument("--compress-seed", type=int, default=0)
    model.add_argument("--embedding-policy", choices=("frozen", "decoders"), default="frozen")
    model.add_argument("--unfreeze-at-step", type=int, default=None)


def add_training_arguments(parser: argparse.ArgumentParser, *, output_dir: str) -> None:
    """The optimizer/run options of :class:`FinetuneConfig` plus ``--threads``, ``--save-model`` and
    ``--report-train-loss`` (group "training"); ``output_dir`` is the default ``--output-dir``."""
    train = parser.add_argument_group("training")
    train.add_argument("--output-dir", default=output_dir)
    train.add_argument("--epochs", type=float, default=1.0)
    train.add_argument("--max-steps", type=int, default=-1)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--eval-batch-size", type=int, default=64)
    train.add_argument("--learning-rate", type=float, default=5e-5)
    train.add_argument("--weight-decay", type=float, default=0.01)
    train.add_argument("--warmup-ratio", type=float, default=0.0)
    train.add_argument("--gradient-accumulation-steps", type=int, default=1)
    train.add_argument("--logging-steps", type=int, default=10)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    train.add_argument(
        "--save-model", action="store_true", help="save the fine-tuned model to <output-dir>/model"
    )
    train.add_argument(
        "--report-train-loss", action="store_true", help="also measure the training-set loss before and after"
    )
    train.add_argument("--debug-dump-params", action="store_true", help=argparse.SUPPRESS)


def finetune_config(args: argparse.Namespace) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of parsed :func:`add_training_arguments` / :func:`add_model_arguments`
    options (``--max-length`` comes from the script's data options)."""
    return FinetuneConfig(
        output_dir=args.output_dir,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        seed=args.seed,
        max_length=args.max_length,
        embedding_policy=args.embedding_policy,
        unfreeze_at_step=args.unfreeze_at_step,
        logging_steps=args.logging_steps,
    )


def compress_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`lighttoken_hf.compress` options from ``--compress-seed`` / ``--compress-epochs``."""
    options: dict[str, Any] = {"seed": args.compress_seed}
    if args.compress_epochs is not None:
        options["schedule"] = {"max_epochs": args.compress_epochs}
    return options


def write_run_outputs(
    args: argparse.Namespace, metrics: dict[str, Any], trainer: Any, extra_files: dict[str, Any] | None = None
) -> None:
    """After a run: the model (``--save-model``, rank 0 writes), ``metrics.json`` and ``extra_files``
    (name -> JSON value) in ``--output-dir`` on the main process, and the metrics printed.

    ``--debug-dump-params`` writes every rank's parameter checksum (the multi-process tests compare them).
    """
    from .distributed import is_main_process, parameter_digest, process_rank, write_json

    metrics["model_path"] = str(args.model or "bundled all-MiniLM-L6-v2")
    metrics["ratio_requested"] = args.ratio or None
    out = Path(args.output_dir)
    if args.debug_dump_params:
        write_json(out / f"params-rank{process_rank()}.json", parameter_digest(trainer.model))
    if args.save_model:
        trainer.save_model(str(out / "model"))
    if is_main_process():
        write_json(out / "metrics.json", metrics)
        for name, value in (extra_files or {}).items():
            write_json(out / name, value)
        print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2, default=str))
