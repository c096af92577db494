#!/usr/bin/env python
"""LoRA on a LightToken-compressed model with peft: train, save the adapter, reload it on a remote-code
base in a process without lighttoken_hf, check the outputs are equal, and merge.

Quick CPU run (defaults: the bundled all-MiniLM-L6-v2 compressed on the fly at 25x, SST-2 from
../shared/data, LoRA rank 8 on the attention query/value projections, 30 steps)::

    python examples/lora.py --data-dir ../shared/data --output-dir runs/lora

What it does:

1. builds the compressed sequence-classification model (``--model`` dense + ``--ratio``, or a
   LightToken checkpoint) and saves it as the *base* (``<output-dir>/base``: weights, remote code,
   tokenizer) -- that folder loads anywhere with ``trust_remote_code=True``;
2. wraps it with ``peft.get_peft_model`` (``LoraConfig(task_type="SEQ_CLS")``: LoRA on the
   backbone's attention projections, the classifier trained in full and saved with the adapter; the
   compressed embedding stays frozen) and trains with ``Trainer`` + ``LightTokenCallback``;
3. saves the adapter (``<output-dir>/adapter``) and the outputs of the trained model on a fixed
   batch of dev sentences;
4. in a fresh Python (``-I -S``, only site-packages on the path and an import blocker for
   ``lighttoken_hf``): ``AutoModelForSequenceClassification.from_pretrained(base,
   trust_remote_code=True)`` + ``PeftModel.from_pretrained(base, adapter)`` and compares the logits
   (``adapter_max_abs_diff``); then ``merge_and_unload()``, compares again, saves the merged model
   (``<output-dir>/merged``, still compressed, remote code included), reloads it and compares once more.

Full settings (a LoRA recipe for SST-2; about an hour per epoch on a 2-core CPU)::

    python examples/lora.py --max-train-samples 0 --max-eval-samples 0 --max-steps -1 --epochs 3 \\
        --batch-size 32 --learning-rate 5e-4 --lora-rank 16 --lora-alpha 32

Multi-process on CPU (gloo; rank 0 writes the outputs and runs the reload check)::

    torchrun --nproc_per_node 2 examples/lora.py --output-dir runs/lora-ddp
    accelerate launch --multi_gpu --num_processes 2 examples/lora.py --output-dir runs/lora-ddp

(Without GPUs the script selects the CPU and gloo itself; ``--multi_gpu`` only picks accelerate's
multi-process launcher. ``accelerate launch --cpu --num_processes 2`` would start one process.)

Writes ``<output-dir>/metrics.json`` (training and dev metrics, the round-trip differences) and exits
with status 1 if a reload gives different outputs (beyond ``--atol``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import site
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Runs in a fresh ``python -I -S`` with only site-packages on sys.path and lighttoken_hf blocked.
RELOAD_CHECK = r"""
import importlib.abc, json, sys

spec = json.load(open(sys.argv[1], encoding="utf-8"))
sys.path.extend(spec["site_packages"])


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "lighttoken_hf" or name.startswith("lighttoken_hf."):
            raise ModuleNotFoundError(f"{name} is blocked: the checkpoint's remote code must be enough")
        return None


sys.meta_path.insert(0, _Block())

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

torch.manual_seed(0)
data = load_file(spec["check_file"])
expected = data.pop("logits")
merged_expected = data.pop("merged_logits")
facts = {}
base = AutoModelForSequenceClassification.from_pretrained(spec["base"], trust_remote_code=True)
facts["base_class"] = type(base).__module__ + "." + type(base).__name__
facts["embedding_class"] = type(base.get_input_embeddings()).__name__
model = PeftModel.from_pretrained(base, spec["adapter"]).eval()
with torch.no_grad():
    logits = model(**data).logits
facts["adapter_max_abs_diff"] = (logits - expected).abs().max().item()
merged = model.merge_and_unload().eval()
facts["merged_class"] = type(merged).__name__
facts["merged_has_lora"] = any("lora_" in name for name, _ in merged.named_parameters())
with torch.no_grad():
    merged_logits = merged(**data).logits
facts["merged_max_abs_diff"] = (merged_logits - expected).abs().max().item()
facts["merged_vs_in_process_merged_max_abs_diff"] = (merged_logits - merged_expected).abs().max().item()
merged.save_pretrained(spec["merged"])
again = AutoModelForSequenceClassification.from_pretrained(spec["merged"], trust_remote_code=True).eval()
with torch.no_grad():
    facts["merged_reload_max_abs_diff"] = (again(**data).logits - merged_logits).abs().max().item()
facts["lighttoken_hf_modules"] = sorted(m for m in sys.modules if m.startswith("lighttoken_hf"))
json.dump(facts, open(spec["facts"], "w", encoding="utf-8"))
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="sst2", help="GLUE classification task (see finetune_glue.py)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("LIGHTTOKEN_DATA_DIR", str(DEFAULT_DATA_DIR)),
        help="folder with glue/<TASK>/train.* and dev.* (default: $LIGHTTOKEN_DATA_DIR or ../shared/data)",
    )
    parser.add_argument("--dataset", default="nyu-mll/glue",
                        help="Hub dataset used when --data-dir has no local file (default: %(default)s)")
    parser.add_argument("--max-train-samples", type=int, default=256, help="seeded subset; 0 = all")
    parser.add_argument("--max-eval-samples", type=int, default=128, help="seeded subset; 0 = all")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--split-seed", type=int, default=42)
    parser.add_argument(
        "--model", default=None, help="dense or LightToken checkpoint (default: bundled MiniLM)"
    )
    parser.add_argument("--ratio", type=float, default=25.0, help="compress a dense model at this ratio")
    parser.add_argument("--compress-epochs", type=int, default=None, help="max epochs per hashing stage")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=int, default=16)
    parser.add_argument("--lora-dropout", type=float, default=0.05)
    parser.add_argument(
        "--target-modules", nargs="+", default=None, help="default: the attention query/value"
    )
    parser.add_argument("--output-dir", default="runs/lora")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process")
    parser.add_argument("--check-examples", type=int, default=8, help="dev sentences in the equality check")
    parser.add_argument("--atol", type=float, default=1e-5, help="tolerance of the equality checks")
    parser.add_argument("--skip-reload-check", action="store_true", help="only train and save the adapter")
    parser.add_argument("--debug-dump-params", action="store_true", help=argparse.SUPPRESS)
    return parser


def reload_check(base: Path, adapter: Path, merged: Path, check_file: Path, timeout: float = 900) -> dict:
    """Run :data:`RELOAD_CHECK` in a fresh ``python -I -S`` (no lighttoken_hf) and return its facts."""
    with tempfile.TemporaryDirectory(prefix="lighttoken-lora-") as tmp:
        spec = {
            "site_packages": site.getsitepackages(),
            "base": str(base),
            "adapter": str(adapter),
            "merged": str(merged),
            "check_file": str(check_file),
            "facts": str(Path(tmp) / "facts.json"),
        }
        (Path(tmp) / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        (Path(tmp) / "check.py").write_text(RELOAD_CHECK, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "LOCAL_RANK", "WORLD_SIZE"))}
        env.pop("MASTER_ADDR", None)
        env.pop("MASTER_PORT", None)
        env.pop("PYTHONPATH", None)
        result = subprocess.run(
            [sys.executable, "-I", "-S", str(Path(tmp) / "check.py"), str(Path(tmp) / "spec.json")],
            env=env,
            cwd=tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(f"the remote-code reload check failed:\n{result.stderr[-4000:]}")
        return json.loads(Path(spec["facts"]).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from peft import LoraConfig, TaskType, get_peft_model
    from safetensors.torch import save_file

    from lighttoken_hf.saving import save_compressed
    from lighttoken_hf.tasks import FinetuneConfig, finetune_glue, glue, lora_target_modules, prepare_model
    from lighttoken_hf.tasks.distributed import is_main_process, parameter_digest, process_rank, write_json
    from lighttoken_hf.tasks.finetune import training_arguments

    task = glue.get_task(args.task)
    if task.is_regression:
        raise SystemExit(f"lora.py runs a classification task; {task.name} is a regression task")
    out = Path(args.output_dir)
    config = FinetuneConfig(
        output_dir=str(out),
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        max_length=args.max_length,
        logging_steps=args.logging_steps,
    )
    training_args = training_arguments(config)
    data_dir = args.data_dir if args.data_dir and Path(args.data_dir).exists() else None
    with training_args.main_process_first(desc="loading data"):
        data = glue.load_glue(task, data_dir, args.dataset, seed=args.split_seed)
    data = glue.subsample(
        data,
        seed=args.split_seed,
        train=args.max_train_samples or None,
        validation=args.max_eval_samples or None,
    )

    options = {"schedule": {"max_epochs": args.compress_epochs}} if args.compress_epochs is not None else {}
    model, tokenizer = prepare_model(
        args.model,
        "sequence-classification",
        training_args,
        ratio=args.ratio or None,
        compress_options=options,
        seed=args.seed,
        progress=is_main_process(),
        id2label=dict(enumerate(task.label_names)),
    )
    if not hasattr(model.get_input_embeddings(), "compressed_nbytes"):
        raise SystemExit("lora.py is for LightToken models: pass --ratio > 0 or a compressed --model")
    if is_main_process():  # the base the adapter is reloaded on (fresh classifier included)
        save_compressed(model, out / "base", tokenizer=tokenizer, overwrite=True, card=False)

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        target_modules=args.target_modules or lora_target_modules(model),
    )
    peft_model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    metrics, trainer = finetune_glue(peft_model, tokenizer, task, data, config, args=training_args)
    metrics["lora"] = {
        "rank": args.lora_rank,
        "alpha": args.lora_alpha,
        "target_modules": sorted(lora.target_modules),
        "trainable_parameters": trainable,
    }
    if args.debug_dump_params:
        write_json(out / f"params-rank{process_rank()}.json", parameter_digest(trainer.model))
    if not is_main_process():
        return metrics

    peft_model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    peft_model.save_pretrained(out / "adapter")
    encoded = glue.tokenize_glue(data["validation"], tokenizer, task, max_length=args.max_length)
    rows = encoded.remove_columns("labels").select(range(min(args.check_examples, len(encoded))))
    batch = tokenizer.pad([dict(r) for r in rows], return_tensors="pt")
    peft_model.eval()
    with torch.no_grad():
        logits = peft_model(**batch).logits
        # what merging gives in this process (a copy: the trained adapter model stays as it is)
        import copy

        merged_logits = copy.deepcopy(peft_model).merge_and_unload()(**batch).logits
    check_file = out / "reload_check.safetensors"
    save_file(
        {**{k: v.contiguous() for k, v in batch.items()}, "logits": logits, "merged_logits": merged_logits},
        str(check_file),
    )
    if not args.skip_reload_check:
        facts = reload_check(out / "base", out / "adapter", out / "merged", check_file)
        facts["atol"] = args.atol
        facts["equal"] = (
            facts["adapter_max_abs_diff"] <= args.atol
            and facts["merged_max_abs_diff"] <= args.atol
            and facts["merged_reload_max_abs_diff"] <= args.atol
            and not facts["merged_has_lora"]
        )
        metrics["reload_check"] = facts
    write_json(out / "metrics.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2, default=str))
    if not metrics.get("reload_check", {"equal": True})["equal"]:
        print("reload check FAILED: outputs differ beyond --atol", file=sys.stderr)
        raise SystemExit(1)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
    from lighttoken_hf.tasks.distributed import end_process_group

    end_process_group()  # under torchrun / accelerate: every rank finishes before the group goes away
