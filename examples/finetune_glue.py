#!/usr/bin/env python
"""Fine-tune a (LightToken-compressed) model on a GLUE-style task and report the task's official metric.

Quick CPU run (defaults: the bundled all-MiniLM-L6-v2, compressed on the fly at 25x, SST-2 from
../shared/data, 512 training / 256 dev examples, 1 epoch)::

    python examples/finetune_glue.py --task sst2 --data-dir ../shared/data --output-dir runs/sst2

Any single-sentence or sentence-pair task of the table in ``lighttoken_hf.tasks.glue`` (sst2, cola,
rte, stsb, mrpc, qnli, qqp, mnli, wnli) from local files (``--data-dir`` holding
``glue/<TASK>/train.parquet`` and ``dev.parquet``, or ``--train-file``/``--validation-file`` in
parquet, CSV, TSV or JSON lines) or from the Hub (``--dataset nyu-mll/glue``). Without a dev file
(STS-B in ../shared/data) ``--dev-size`` training rows are held out with ``--split-seed``.

Models: ``--model`` takes a dense checkpoint (compressed on the fly at ``--ratio``; ``--ratio 0``
fine-tunes it uncompressed) or a LightToken checkpoint (fine-tuned as it is). The compressed
embedding is frozen by default (``--embedding-policy decoders`` trains its decoders and low-rank
factors, ``--unfreeze-at-step N`` after N steps), through ``LightTokenCallback``.

Full settings (the usual GLUE recipe for a MiniLM-size model; hours per task on a 2-core CPU)::

    python examples/finetune_glue.py --task sst2 --max-train-samples 0 --max-eval-samples 0 \\
        --epochs 3 --batch-size 32 --learning-rate 5e-5 --warmup-ratio 0.1 --max-length 128

(``0`` means all examples; RTE, MRPC and STS-B are usually trained 5-10 epochs.)

Multi-process on CPU (gloo; only rank 0 writes the outputs)::

    torchrun --nproc_per_node 2 examples/finetune_glue.py --task sst2 --output-dir runs/sst2-ddp
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_glue.py --task sst2 --output-dir runs/sst2-ddp

(Without GPUs the script selects the CPU and gloo itself; ``--multi_gpu`` only picks accelerate's
multi-process launcher. ``accelerate launch --cpu --num_processes 2`` would start one process.)

Writes ``<output-dir>/metrics.json`` (eval metrics as fractions, ``eval_score`` = their mean,
training loss, model and compression facts, the settings) and prints it; ``--save-model`` also saves
the fine-tuned model to ``<output-dir>/model``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lighttoken_hf.tasks.cli_args import (  # noqa: E402
    add_model_arguments,
    add_training_arguments,
    compress_options,
    default_data_dir,
    finetune_config,
    local_data_dir,
    write_run_outputs,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--task", default="sst2", help="GLUE task: sst2, cola, rte, stsb, mrpc, qnli, qqp, mnli, wnli"
    )
    data.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help="folder with glue/<TASK>/train.* and dev.* (default: $LIGHTTOKEN_DATA_DIR or ../shared/data)",
    )
    data.add_argument("--dataset", default="nyu-mll/glue",
                      help="Hub dataset used when --data-dir has no local file (default: %(default)s)")
    data.add_argument("--train-file", default=None)
    data.add_argument("--validation-file", default=None)
    data.add_argument(
        "--dev-size", type=float, default=0.1, help="held-out share (<1) or rows when no dev file"
    )
    data.add_argument("--split-seed", type=int, default=42)
    data.add_argument("--max-train-samples", type=int, default=512, help="seeded subset; 0 = all")
    data.add_argument("--max-eval-samples", type=int, default=256, help="seeded subset; 0 = all")
    data.add_argument("--max-length", type=int, default=128)

    add_model_arguments(parser)
    add_training_arguments(parser, output_dir="runs/glue")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from lighttoken_hf.tasks import finetune_glue, glue, prepare_model
    from lighttoken_hf.tasks.distributed import is_main_process
    from lighttoken_hf.tasks.finetune import training_arguments

    task = glue.get_task(args.task)
    config = finetune_config(args)
    training_args = training_arguments(config)  # sets up the process group under torchrun/accelerate

    data_dir = local_data_dir(args.data_dir)
    with training_args.main_process_first(desc="loading data"):
        data = glue.load_glue(
            task,
            data_dir,
            args.dataset,
            train_file=args.train_file,
            validation_file=args.validation_file,
            dev_size=args.dev_size if args.dev_size < 1 else int(args.dev_size),
            seed=args.split_seed,
        )
    data = glue.subsample(
        data,
        seed=args.split_seed,
        train=args.max_train_samples or None,
        validation=args.max_eval_samples or None,
    )

    labels = (
        {"num_labels": 1, "problem_type": "regression"}
        if task.is_regression
        else {"id2label": dict(enumerate(task.label_names)), "problem_type": "single_label_classification"}
    )
    model, tokenizer = prepare_model(
        args.model,
        "sequence-classification",
        training_args,
        ratio=args.ratio or None,
        compress_options=compress_options(args),
        seed=args.seed,
        progress=is_main_process(),
        **labels,
    )

    metrics, trainer = finetune_glue(
        model, tokenizer, task, data, config, report_train_loss=args.report_train_loss, args=training_args
    )
    write_run_outputs(args, metrics, trainer)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
    from lighttoken_hf.tasks.distributed import end_process_group

    end_process_group()  # under torchrun / accelerate: every rank finishes before the group goes away
