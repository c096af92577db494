"""Saving a compressed model: the checkpoint's contents, atomicity on failure, and ``checkpoint_info``."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from conftest import FAST_SCHEDULE

import lighttoken_hf
from lighttoken_hf.checkpoint import REPORT_FILENAME, checkpoint_info
from lighttoken_hf.saving import check_output_dir, save_compressed

REMOTE_CODE = ("configuration_lighttoken.py", "modeling_lighttoken.py", "lighttoken_codec.py")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@pytest.fixture
def compressed(tiny_bert):
    return lighttoken_hf.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)


def _snapshot(folder):
    """Every file and folder below ``folder``: relative path -> bytes (``None`` for folders)."""
    return {
        p.relative_to(folder): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))
    }


def _hidden(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _fail_tokenizer_save(monkeypatch, exc):
    """Make the tokenizer save (which runs after the weights are written) raise ``exc``."""
    from transformers import PreTrainedTokenizerBase

    def boom(self, *args, **kwargs):
        raise exc("interrupted while saving the tokenizer")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", boom)


def _fail_weights_write(monkeypatch, exc):
    """Make the safetensors writer leave a partial ``model.safetensors`` behind, then raise ``exc``."""
    import transformers.modeling_utils

    def boom(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise exc("interrupted while writing the weights")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", boom)


def _fail_final_rename(monkeypatch, exc):
    """Make renaming the finished temporary folder into place raise ``exc`` (everything else is real)."""
    real_rename, real_replace = os.rename, os.replace

    def guard(real):
        def wrapper(src, dst, *args, **kwargs):
            if ".tmp-" in os.path.basename(os.fspath(src)):
                raise exc("interrupted while moving the checkpoint into place")
            return real(src, dst, *args, **kwargs)

        return wrapper

    monkeypatch.setattr(os, "rename", guard(real_rename))
    monkeypatch.setattr(os, "replace", guard(real_replace))


FAILURES = {
    "tokenizer": _fail_tokenizer_save,
    "weights": _fail_weights_write,
    "final-rename": _fail_final_rename,
}


def test_saved_checkpoint_is_complete_and_reloads(compressed, tiny_tokenizer, id_batch, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "ckpt"
    report = compressed.compression_report
    returned = save_compressed(compressed, out, tokenizer=tiny_tokenizer, report=report)
    assert returned == out.absolute()

    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", REPORT_FILENAME, *REMOTE_CODE} <= names
    assert "tokenizer_config.json" in names
    assert {"tokenizer.json", "vocab.txt"} & names
    assert [n for n in names if n.endswith(PICKLE_SUFFIXES)] == []
    assert all(p.is_file() and p.stat().st_size > 0 for p in out.iterdir())

    saved = json.loads((out / REPORT_FILENAME).read_text(encoding="utf-8"))
    assert saved["ratio"] == report.ratio
    assert saved["compressed_nbytes"] == report.compressed_nbytes
    assert saved["plan"]["stage_bits"] == report.plan["stage_bits"]
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["model_type"] == "lighttoken"
    for name in REMOTE_CODE:
        assert (out / name).read_text(encoding="utf-8").strip()
    assert _hidden(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # a plain folder, not mkdtemp's 0700

    reloaded = AutoModel.from_pretrained(out).eval()
    assert type(reloaded) is type(compressed)
    with torch.no_grad():
        expected = compressed(**id_batch).last_hidden_state
        got = reloaded(**id_batch).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    tokenizer = AutoTokenizer.from_pretrained(out)
    text = "the man read a long sentence"
    assert tokenizer(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", list(FAILURES))
def test_failed_first_save_leaves_nothing(compressed, tiny_tokenizer, tmp_path, monkeypatch, where, exc):
    parent = tmp_path / "models"
    parent.mkdir()
    (parent / "neighbour.txt").write_text("unrelated")
    before = _snapshot(parent)
    out = parent / "ckpt"
    FAILURES[where](monkeypatch, exc)

    with pytest.raises(exc, match="interrupted"):
        save_compressed(compressed, out, tokenizer=tiny_tokenizer)

    assert not out.exists()
    assert _hidden(parent) == []
    assert _snapshot(parent) == before


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_failed_save_removes_the_parent_folders_it_created(
    compressed, tiny_tokenizer, tmp_path, monkeypatch, exc
):
    out = tmp_path / "new" / "deeper" / "ckpt"
    _fail_tokenizer_save(monkeypatch, exc)

    with pytest.raises(exc, match="interrupted"):
        save_compressed(compressed, out, tokenizer=tiny_tokenizer)

    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("where", list(FAILURES))
def test_failed_overwrite_leaves_the_old_checkpoint_byte_identical(
    compressed, tiny_tokenizer, tmp_path, monkeypatch, where, exc
):
    out = tmp_path / "ckpt"
    save_compressed(compressed, out, tokenizer=tiny_tokenizer)
    (out / "marker.txt").write_text("the old checkpoint")  # a new save would not contain this file
    (out / "notes").mkdir()
    (out / "notes" / "run.json").write_text('{"run": 1}')
    before = _snapshot(out)
    FAILURES[where](monkeypatch, exc)

    with pytest.raises(exc, match="interrupted"):
        save_compressed(compressed, out, tokenizer=tiny_tokenizer, overwrite=True)

    assert _snapshot(out) == before
    assert _hidden(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_overwrite_replaces_the_old_checkpoint(compressed, tiny_tokenizer, tmp_path):
    out = tmp_path / "ckpt"
    save_compressed(compressed, out)
    (out / "stale.txt").write_text("from an older run")
    (out / "pytorch_model.bin").write_bytes(b"old pickle")

    save_compressed(compressed, out, tokenizer=tiny_tokenizer, overwrite=True)

    names = {p.name for p in out.iterdir()}
    assert "model.safetensors" in names
    assert "stale.txt" not in names
    assert "pytorch_model.bin" not in names
    assert _hidden(tmp_path) == []
    assert checkpoint_info(out)["report"]["ratio"] == compressed.compression_report.ratio


def test_non_empty_folder_without_overwrite_is_refused_and_untouched(compressed, tiny_tokenizer, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")
    before = _snapshot(out)

    for attempt in (
        lambda: check_output_dir(out),
        lambda: save_compressed(compressed, out, tokenizer=tiny_tokenizer),
    ):
        with pytest.raises(FileExistsError) as info:
            attempt()
        message = str(info.value)
        assert str(out.absolute()) in message
        assert "not empty" in message
        assert "overwrite" in message
        assert _snapshot(out) == before
        assert _hidden(tmp_path) == []


def test_folder_filled_by_someone_else_during_the_save_is_not_replaced(
    compressed, tiny_tokenizer, tmp_path, monkeypatch
):
    from transformers import PreTrainedTokenizerBase

    out = tmp_path / "ckpt"
    real_save = PreTrainedTokenizerBase.save_pretrained

    def save_while_another_writer_arrives(self, *args, **kwargs):
        out.mkdir()
        (out / "theirs.txt").write_text("another process")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", save_while_another_writer_arrives)

    with pytest.raises(FileExistsError, match="overwrite"):
        save_compressed(compressed, out, tokenizer=tiny_tokenizer)

    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert (out / "theirs.txt").read_text() == "another process"
    assert _hidden(tmp_path) == []


def test_a_file_as_output_path_is_refused(compressed, tmp_path):
    out = tmp_path / "model.txt"
    out.write_text("a file")
    with pytest.raises(FileExistsError, match="not a directory"):
        save_compressed(compressed, out, overwrite=True)
    assert out.read_text() == "a file"
    assert _hidden(tmp_path) == []


def test_empty_existing_folder_is_accepted(compressed, tiny_tokenizer, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert check_output_dir(out) == out.absolute()

    save_compressed(compressed, out, tokenizer=tiny_tokenizer)

    assert (out / "model.safetensors").is_file()
    assert (out / REPORT_FILENAME).is_file()
    assert _hidden(tmp_path) == []


def test_checkpoint_info_matches_the_report(compressed, tiny_tokenizer, tmp_path):
    out = tmp_path / "ckpt"
    report = compressed.compression_report
    save_compressed(compressed, out, tokenizer=tiny_tokenizer, report=report)

    info = checkpoint_info(out)

    assert info["path"] == str(out.absolute())
    assert info["report_source"] == REPORT_FILENAME
    assert info["report"]["ratio"] == report.ratio
    assert info["report"]["compressed_nbytes"] == report.compressed_nbytes
    for key in ("num_embeddings", "embedding_dim", "svd_rank", "stage_bits", "stage_rows"):
        assert info["plan"][key] == report.plan[key], key
    factor_dtype = getattr(torch, info["plan"]["factor_dtype"])
    assert torch.tensor([], dtype=factor_dtype).element_size() == report.plan["factor_bytes"]
    assert info["base_model"]["model_type"] == "bert"
    assert info["architectures"] == ["LightTokenModel"]
    assert info["files"]["model.safetensors"] == (out / "model.safetensors").stat().st_size


def test_checkpoint_info_rejects_folders_that_are_not_lighttoken_checkpoints(tiny_bert, tmp_path):
    plain = tmp_path / "plain-bert"
    tiny_bert.save_pretrained(plain)
    with pytest.raises(ValueError, match="not a LightToken checkpoint") as info:
        checkpoint_info(plain)
    assert "'bert'" in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        checkpoint_info(empty)

    with pytest.raises(FileNotFoundError, match="not a directory"):
        checkpoint_info(tmp_path / "missing")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        checkpoint_info(broken)


def test_the_config_and_the_codec_agree_on_every_layout_default():
    """A config field left out means what the codec's own default means (one layout, no older variants)."""
    import inspect

    config = lighttoken_hf.LightTokenConfig()
    codec = inspect.signature(lighttoken_hf.LightTokenEmbedding.__init__).parameters
    assert config.row_index == codec["row_index"].default == "coverage"
    assert getattr(torch, config.decoder_dtype) == codec["decoder_dtype"].default == torch.int8
    assert getattr(torch, config.factor_dtype) == codec["factor_dtype"].default
    with pytest.raises(ValueError, match="row_index must be one of"):
        lighttoken_hf.LightTokenEmbedding(10, 2, stage_bits=[8], stage_rows=[5], row_index="token_rank")
