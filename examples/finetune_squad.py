#!/usr/bin/env python
"""Fine-tune a (LightToken-compressed) model for extractive QA on SQuAD v1.1 and report the official EM/F1.

Quick CPU run (defaults: the bundled all-MiniLM-L6-v2, compressed on the fly at 25x, the 44-article
SQuAD file in ../shared/data split by article, 256 training / 128 dev questions, 256-token windows)::

    python examples/finetune_squad.py --data-dir ../shared/data --output-dir runs/squad

Data: ``--data-dir`` (a folder holding ``squad/*.parquet``, or the file itself), ``--train-file`` /
``--validation-file`` (parquet or JSON lines in the Hugging Face SQuAD layout: id, title, context,
question, answers{text, answer_start}) or ``--dataset rajpurkar/squad`` from the Hub. Without a dev
file, ``--dev-size`` articles (a share or a count) are held out with ``--split-seed``: no article is
in both splits.

Long contexts are cut into ``--max-length``-token windows overlapping by ``--doc-stride`` tokens;
answers are the best start/end pair over an example's windows (``--n-best``, at most
``--max-answer-length`` tokens). EM/F1 are the official v1.1 script's (0-100).

Full settings (the usual recipe; many hours on a 2-core CPU; the 44-article file has 11,877
questions)::

    python examples/finetune_squad.py --max-train-samples 0 --max-eval-samples 0 --epochs 2 \\
        --batch-size 32 --learning-rate 5e-5 --warmup-ratio 0.1 --max-length 384 --doc-stride 128

Multi-process on CPU (gloo; only rank 0 writes the outputs)::

    torchrun --nproc_per_node 2 examples/finetune_squad.py --output-dir runs/squad-ddp
    accelerate launch --multi_gpu --num_processes 2 examples/finetune_squad.py --output-dir runs/squad-ddp

(Without GPUs the script selects the CPU and gloo itself; ``--multi_gpu`` only picks accelerate's
multi-process launcher. ``accelerate launch --cpu --num_processes 2`` would start one process.)

Writes ``<output-dir>/metrics.json`` and ``<output-dir>/predictions.json`` (id -> answer); see
``examples/finetune_glue.py`` for the model options (``--model``, ``--ratio``, ``--embedding-policy``).
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
        "--data-dir",
        default=default_data_dir(),
        help="folder with squad/*.parquet (default: $LIGHTTOKEN_DATA_DIR or ../shared/data)",
    )
    data.add_argument("--dataset", default="rajpurkar/squad",
                      help="Hub dataset used when --data-dir has no local file (default: %(default)s)")
    data.add_argument("--train-file", default=None)
    data.add_argument("--validation-file", default=None)
    data.add_argument("--dev-size", type=float, default=0.1, help="held-out share (<1) or number of articles")
    data.add_argument("--split-seed", type=int, default=42)
    data.add_argument(
        "--max-train-samples", type=int, default=256, help="seeded subset of questions; 0 = all"
    )
    data.add_argument("--max-eval-samples", type=int, default=128, help="seeded subset of questions; 0 = all")
    data.add_argument("--max-length", type=int, default=256, help="tokens per window")
    data.add_argument("--doc-stride", type=int, default=64, help="overlap between windows")
    data.add_argument("--n-best", type=int, default=20)
    data.add_argument("--max-answer-length", type=int, default=30)

    add_model_arguments(parser)
    add_training_arguments(parser, output_dir="runs/squad")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from lighttoken_hf.tasks import finetune_squad, prepare_model, squad
    from lighttoken_hf.tasks.distributed import is_main_process
    from lighttoken_hf.tasks.finetune import training_arguments
    from lighttoken_hf.tasks.glue import subsample

    config = finetune_config(args)
    training_args = training_arguments(config)  # sets up the process group under torchrun/accelerate

    data_dir = local_data_dir(args.data_dir)
    with training_args.main_process_first(desc="loading data"):
        data = squad.load_squad(
            data_dir,
            args.dataset,
            train_file=args.train_file,
            validation_file=args.validation_file,
            dev_size=args.dev_size if args.dev_size < 1 else int(args.dev_size),
            seed=args.split_seed,
        )
    data = subsample(
        data,
        seed=args.split_seed,
        train=args.max_train_samples or None,
        validation=args.max_eval_samples or None,
    )

    model, tokenizer = prepare_model(
        args.model,
        "question-answering",
        training_args,
        ratio=args.ratio or None,
        compress_options=compress_options(args),
        seed=args.seed,
        progress=is_main_process(),
    )

    metrics, trainer = finetune_squad(
        model,
        tokenizer,
        data,
        config,
        doc_stride=args.doc_stride,
        n_best=args.n_best,
        max_answer_length=args.max_answer_length,
        report_train_loss=args.report_train_loss,
        args=training_args,
    )
    write_run_outputs(args, metrics, trainer, {"predictions.json": trainer.squad_predictions})
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
    from lighttoken_hf.tasks.distributed import end_process_group

    end_process_group()  # under torchrun / accelerate: every rank finishes before the group goes away
