"""LightTokenCallback with the real transformers.Trainer: policies, schedule, logs, checkpoints, resume, DDP."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST_SCHEDULE
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import load_file
from tiny_models import tiny_bert_config
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import lighttoken_hf as lt
from lighttoken_hf.training import (
    CALLBACK_STATE_FILENAME,
    apply_embedding_policy,
    embedding_param_counts,
    embedding_storage_stats,
    lighttoken_embeddings,
)

pytestmark = pytest.mark.usefixtures("single_thread")

EMB = "backbone.bert.embeddings.word_embeddings."
BUFFERS = ("codes_", "coverage_", "padding_row")  # the compressed embedding's buffers (never trained)


def is_buffer(name: str) -> bool:
    """Whether a compressed-embedding tensor name (without prefix) is a buffer: codes, masks, int8 weights."""
    return name.startswith(BUFFERS) or name.endswith("_qweight")
LOG_KEYS = (
    "lighttoken/ratio",
    "lighttoken/embedding_bytes",
    "lighttoken/dense_embedding_bytes",
    "lighttoken/trainable_params",
    "lighttoken/trainable_embedding_params",
    "lighttoken/embedding_trainable",
)


def _tiny_config() -> BertConfig:
    return tiny_bert_config(num_labels=2)


@pytest.fixture(scope="module")
def compressed_once() -> lt.LightTokenForSequenceClassification:
    torch.manual_seed(0)
    return lt.compress(
        BertForSequenceClassification(_tiny_config()),
        ratio=4,
        svd_rank=4,
        frequency_aware=False,
        schedule=FAST_SCHEDULE,
        progress=False,
    )


@pytest.fixture
def model(compressed_once) -> lt.LightTokenForSequenceClassification:
    """A fresh copy of a tiny compressed BERT classifier (rank-4 factors + hashing stages, fp16 storage)."""
    return copy.deepcopy(compressed_once)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (16, 8), generator=g)
    ids[:, 0] = 2
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * 16, "labels": (ids[:, 1] % 2).tolist()}
    )


def _args(out: Path, **kwargs) -> TrainingArguments:
    defaults = {
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "weight_decay": 0.1,  # frozen parameters must not decay either
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": [],
        "disable_tqdm": True,
        "seed": 0,
    }
    return TrainingArguments(output_dir=str(out), **{**defaults, **kwargs})


def _embedding_tensors(model) -> dict[str, torch.Tensor]:
    emb = model.get_input_embeddings()
    out = {n: p.detach().clone() for n, p in emb.named_parameters()}
    out.update({n: b.detach().clone() for n, b in emb.named_buffers()})
    return out


def _param_names(model) -> tuple[list[str], list[str]]:
    emb = model.get_input_embeddings()
    return [n for n, _ in emb.named_parameters()], [n for n, _ in emb.named_buffers()]


class StepRecorder(TrainerCallback):
    """Records, at each step, which embedding parameters require grad and their values after the step."""

    def __init__(self) -> None:
        self.requires_grad: dict[int, bool] = {}
        self.dtypes: dict[int, set[torch.dtype]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}
        self.logs: list[dict] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        params = list(model.get_input_embeddings().parameters())
        flags = {p.requires_grad for p in params}
        assert len(flags) == 1, "the policy must treat all embedding parameters alike"
        self.requires_grad[state.global_step + 1] = flags.pop()
        self.dtypes[state.global_step + 1] = {p.dtype for p in params}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after[state.global_step] = {
            n: p.detach().float().clone() for n, p in model.get_input_embeddings().named_parameters()
        }

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def _train(model, dataset, out, callback, recorder=None, resume=None, **kwargs) -> Trainer:
    callbacks = [recorder, callback] if recorder is not None else [callback]
    trainer = Trainer(model=model, args=_args(out, **kwargs), train_dataset=dataset, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"policy": "trainable"}, ValueError, "unknown embedding policy"),
        ({"policy": "schedule"}, ValueError, "unfreeze_at_step=N"),
        ({"unfreeze_at_step": -1}, ValueError, "unfreeze_at_step must be >= 0"),
        ({"unfreeze_at_step": 2.5}, TypeError, "unfreeze_at_step must be an int"),
        ({"unfreeze_at_step": True}, TypeError, "unfreeze_at_step must be an int"),
        ({"policy": "decoders", "unfreeze_at_step": 3}, ValueError, "starts frozen"),
        ({"log_every": 0}, ValueError, "log_every must be >= 1"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        lt.LightTokenCallback(**kwargs)


def test_model_without_compressed_embedding_is_refused(tmp_path, dataset):
    torch.manual_seed(0)
    dense = BertForSequenceClassification(_tiny_config())
    with pytest.raises(ValueError, match="has no LightTokenEmbedding.*lighttoken_hf.compress"):
        Trainer(model=dense, args=_args(tmp_path), train_dataset=dataset, callbacks=[lt.LightTokenCallback()])
    with pytest.raises(ValueError, match="has no LightTokenEmbedding"):
        apply_embedding_policy(dense, "frozen")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        lighttoken_embeddings("not a model")


def test_apply_embedding_policy_touches_only_the_embedding(model):
    emb = model.get_input_embeddings()
    n_emb = sum(p.numel() for p in emb.parameters())
    n_all = sum(p.numel() for p in model.parameters())
    for p in emb.parameters():
        p.grad = torch.zeros_like(p)
    frozen = apply_embedding_policy(model, "frozen")
    assert (frozen.trainable_embedding_params, frozen.frozen_embedding_params) == (0, n_emb)
    assert (frozen.trainable_params, frozen.total_params) == (n_all - n_emb, n_all)
    # None, not zero: AdamW skips parameters without a gradient
    assert all(p.grad is None and not p.requires_grad for p in emb.parameters())
    backbone = [p for n, p in model.named_parameters() if not n.startswith(EMB)]
    assert backbone and all(p.requires_grad for p in backbone)
    trainable = apply_embedding_policy(model, "decoders")
    assert trainable == embedding_param_counts(model)
    assert (trainable.trainable_embedding_params, trainable.trainable_params) == (n_emb, n_all)
    with pytest.raises(ValueError, match="unknown embedding policy"):
        apply_embedding_policy(model, "codes")


# ---------------------------------------------------------------------------------------------- policies
def test_frozen_policy_keeps_the_embedding_and_trains_the_backbone(model, dataset, tmp_path):
    before_emb = _embedding_tensors(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith(EMB)}
    recorder = StepRecorder()
    _train(model, dataset, tmp_path, lt.LightTokenCallback(), recorder)
    assert set(recorder.requires_grad.values()) == {False}
    after_emb = _embedding_tensors(model)
    for name, tensor in before_emb.items():
        assert after_emb[name].dtype == tensor.dtype, name  # storage dtype restored after training
        assert torch.equal(after_emb[name], tensor), f"{name} changed under the frozen policy"
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert "backbone.classifier.weight" in changed
    assert any(".encoder.layer.0." in n for n in changed)
    assert all(p.requires_grad for p in model.get_input_embeddings().parameters())  # left as found


def test_decoders_policy_trains_factors_and_decoders_not_codes(model, dataset, tmp_path):
    params, buffers = _param_names(model)
    assert {"lowrank_left", "lowrank_right", "decoder_0_scale", "decoder_0_bias"} <= set(params)
    assert any(b.startswith("codes_") for b in buffers) and "decoder_0_qweight" in buffers
    before = _embedding_tensors(model)
    recorder = StepRecorder()
    _train(model, dataset, tmp_path, lt.LightTokenCallback(policy="decoders"), recorder)
    assert set(recorder.requires_grad.values()) == {True}
    after = _embedding_tensors(model)
    for name in params:
        assert after[name].dtype == before[name].dtype == torch.float16
        assert not torch.equal(after[name], before[name]), f"{name} did not train under the decoders policy"
    for name in buffers:
        assert torch.equal(after[name], before[name]), f"buffer {name} changed"
    stats = model.config.compression_stats["fine_tuning"]
    assert stats == {
        "embedding_policy": "decoders",
        "unfreeze_at_step": None,
        "embedding_trained_from_step": 0,
        "embedding_update_steps": 4,
    }


def test_decoders_train_in_fp32_so_small_updates_accumulate(model, dataset, tmp_path):
    """AdamW steps of size ~lr are far below the fp16 spacing of the factors: they only add up in fp32."""
    initial = {n: p.detach().float().clone() for n, p in model.get_input_embeddings().named_parameters()}
    recorder = StepRecorder()
    _train(model, dataset, tmp_path, lt.LightTokenCallback(policy="decoders"), recorder, learning_rate=1e-5)
    assert set().union(*recorder.dtypes.values()) == {torch.float32}
    for name, tensor in initial.items():
        moved = (recorder.after[4][name] != tensor).float().mean().item()
        assert moved > 0.9, f"{name}: only {moved:.0%} of the entries moved"
    assert {p.dtype for p in model.get_input_embeddings().parameters()} == {torch.float16}


def test_unfreeze_at_step_changes_the_embedding_only_after_that_step(model, dataset, tmp_path):
    initial = {n: p.detach().float().clone() for n, p in model.get_input_embeddings().named_parameters()}
    recorder = StepRecorder()
    _train(model, dataset, tmp_path, lt.LightTokenCallback(unfreeze_at_step=2), recorder, max_steps=5)
    assert recorder.requires_grad == {1: False, 2: False, 3: True, 4: True, 5: True}
    for step in (1, 2):
        assert all(torch.equal(recorder.after[step][n], t) for n, t in initial.items()), step
    for step in (3, 4, 5):
        previous = recorder.after[step - 1]
        assert all(not torch.equal(recorder.after[step][n], previous[n]) for n in initial), step
    assert model.config.compression_stats["fine_tuning"]["embedding_update_steps"] == 3


# ---------------------------------------------------------------------------------------------- logging
def test_log_keys_reach_log_history_and_reporters(model, dataset, tmp_path):
    recorder = StepRecorder()  # registered before the callback, like report_to integrations
    trainer = _train(model, dataset, tmp_path, lt.LightTokenCallback(unfreeze_at_step=2), recorder)
    records = [r for r in trainer.state.log_history if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    stats = embedding_storage_stats(model)
    n_emb = sum(p.numel() for p in model.get_input_embeddings().parameters())
    for record in records:
        assert all(isinstance(record[k], (int, float)) for k in LOG_KEYS), record
        assert record["lighttoken/embedding_bytes"] == model.config.compression_stats["compressed_nbytes"]
        assert record["lighttoken/ratio"] == pytest.approx(model.config.compression_stats["ratio"])
        assert record["lighttoken/ratio"] == pytest.approx(stats["ratio"])
    trainable = [
        (r["lighttoken/trainable_embedding_params"], r["lighttoken/embedding_trainable"]) for r in records
    ]
    assert trainable == [(0, 0.0), (n_emb, 1.0), (n_emb, 1.0), (n_emb, 1.0)]
    assert all(set(LOG_KEYS) <= set(logs) for logs in recorder.logs if "loss" in logs)


def test_log_every_adds_log_records(model, dataset, tmp_path):
    trainer = _train(model, dataset, tmp_path, lt.LightTokenCallback(log_every=2), logging_steps=100)
    steps = [r["step"] for r in trainer.state.log_history if "loss" in r]
    assert steps == [2, 4]


# ---------------------------------------------------------------------------------------------- checkpoints
def _embedding_file_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        return {k[len(EMB) :]: f.get_tensor(k) for k in f.keys() if k.startswith(EMB)}  # noqa: SIM118


def test_checkpoints_carry_stats_and_store_the_counted_bytes(model, dataset, tmp_path):
    trainer = _train(
        model,
        dataset,
        tmp_path,
        lt.LightTokenCallback(unfreeze_at_step=1),
        save_strategy="steps",
        save_steps=2,
    )
    expected_bytes = model.config.compression_stats["compressed_nbytes"]
    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        state = json.loads((folder / CALLBACK_STATE_FILENAME).read_text())
        assert state["global_step"] == step
        assert state["callback"]["attributes"] == {"phase": "decoders", "switched_at_step": 1}
        assert state["embedding"]["embedding_bytes"] == expected_bytes
        assert state["embedding"]["trainable_embedding_params"] > 0
        assert state["compression_stats"]["ratio"] == pytest.approx(state["embedding"]["ratio"])
        assert state["compression_stats"]["compressed_nbytes"] == expected_bytes
        config = json.loads((folder / "config.json").read_text())
        assert config["compression_stats"]["fine_tuning"]["embedding_update_steps"] == step - 1
        # trained in fp32, saved in the storage dtype: the file holds exactly the bytes the ratio counts
        tensors = _embedding_file_tensors(folder)
        assert {t.dtype for n, t in tensors.items() if not is_buffer(n)} == {torch.float16}
        assert sum(t.numel() * t.element_size() for t in tensors.values()) == expected_bytes
        assert trainer.state.stateful_callbacks["LightTokenCallback"]["attributes"]["phase"] == "decoders"


@pytest.mark.parametrize("restore_flag", [False, True])
def test_resume_restores_the_callback_state(compressed_once, dataset, tmp_path, restore_flag):
    first = copy.deepcopy(compressed_once)
    _train(
        first,
        dataset,
        tmp_path,
        lt.LightTokenCallback(unfreeze_at_step=2),
        save_strategy="steps",
        save_steps=3,
    )
    checkpoint = tmp_path / "checkpoint-3"
    resumed = copy.deepcopy(compressed_once)  # the Trainer loads the checkpoint's weights into it
    # With restore_callback_states_from_checkpoint the Trainer rebuilds the callback from the checkpoint,
    # so a plain frozen callback becomes the saved schedule; without it the callback restores its own phase.
    callback = lt.LightTokenCallback() if restore_flag else lt.LightTokenCallback(unfreeze_at_step=2)
    recorder = StepRecorder()
    trainer = _train(
        resumed,
        dataset,
        tmp_path,
        callback,
        recorder,
        resume=str(checkpoint),
        restore_callback_states_from_checkpoint=restore_flag,
    )
    active = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, lt.LightTokenCallback)]
    assert len(active) == 1
    assert (active[0].unfreeze_at_step, active[0].phase, active[0].switched_at_step) == (2, "decoders", 2)
    assert recorder.requires_grad == {4: True}
    at_checkpoint = _embedding_file_tensors(checkpoint)
    after = _embedding_tensors(resumed)
    for name in (n for n, _ in resumed.get_input_embeddings().named_parameters()):
        assert not torch.equal(after[name], at_checkpoint[name]), f"{name} did not train after resuming"
    assert resumed.config.compression_stats["fine_tuning"]["embedding_update_steps"] == 2


def test_save_model_reloads_with_auto_class_and_carries_the_stats(model, dataset, tmp_path):
    trainer = _train(model, dataset, tmp_path / "run", lt.LightTokenCallback(policy="decoders"))
    out = tmp_path / "final"
    trainer.save_model(str(out))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert type(reloaded).__name__ == "LightTokenForSequenceClassification"
    stats = reloaded.config.compression_stats
    assert stats["ratio"] == pytest.approx(model.get_input_embeddings().compression_ratio)
    assert stats["fine_tuning"]["embedding_update_steps"] == 4
    assert reloaded.get_input_embeddings().compressed_nbytes == stats["compressed_nbytes"]
    saved = load_file(str(out / "model.safetensors"))
    assert (
        sum(t.numel() * t.element_size() for k, t in saved.items() if k.startswith(EMB))
        == stats["compressed_nbytes"]
    )
    batch = dataset[:3]
    inputs = {k: torch.tensor(batch[k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model.eval()(**inputs).logits)


def test_embedding_frozen_before_the_optimizer_is_refused(model, dataset, tmp_path):
    for p in model.get_input_embeddings().parameters():
        p.requires_grad_(False)  # the optimizer would not contain them: unfreezing could never train them
    with pytest.raises(ValueError, match="not in the optimizer"):
        _train(model, dataset, tmp_path, lt.LightTokenCallback(policy="decoders"))


# ---------------------------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_processes_identical_parameters(tmp_path):
    script = Path(__file__).with_name("ddp_callback_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*cmd, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for policy in ("frozen", "decoders", "schedule"):
        initial = load_file(str(tmp_path / policy / "initial_rank0.safetensors"))
        assert initial.keys() == load_file(str(tmp_path / policy / "initial_rank1.safetensors")).keys()
        final = [load_file(str(tmp_path / policy / f"final_rank{r}.safetensors")) for r in (0, 1)]
        for key, tensor in final[0].items():
            assert torch.equal(tensor, final[1][key]), f"{policy}: {key} differs between the ranks"
        emb_params = [k for k in initial if k.startswith(EMB) and not is_buffer(k[len(EMB) :])]
        emb_buffers = [k for k in initial if k.startswith(EMB) and k not in emb_params]
        assert emb_params and emb_buffers
        assert not torch.equal(final[0]["backbone.classifier.weight"], initial["backbone.classifier.weight"])
        for key in emb_buffers:
            assert torch.equal(final[0][key], initial[key]), f"{policy}: buffer {key} changed"
        for key in emb_params:
            unchanged = torch.equal(final[0][key], initial[key])
            assert unchanged == (policy == "frozen"), f"{policy}: {key} unchanged={unchanged}"
    for rank in (0, 1):
        errors = json.loads((tmp_path / f"errors_rank{rank}.json").read_text())
        assert "ddp_find_unused_parameters=True" in errors["find_unused_false"]
