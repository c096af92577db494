"""The ``lighttoken`` command line, on a tiny random BERT saved with a tiny WordPiece tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from lighttoken_hf import LightTokenEmbedding, LightTokenModel
from lighttoken_hf.cli import main


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_compress_writes_a_loadable_checkpoint(tiny_model_dir, tiny_bert, tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "out"
    code = main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4", "--epochs", "1",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert (out / "lighttoken_report.json").is_file()
    report = json.loads((out / "lighttoken_report.json").read_text())
    assert report["compressed_nbytes"] * 4 <= report["dense_nbytes"]
    assert report["settings"]["schedule"]["max_epochs"] == 1
    # the model folder has a tokenizer, so the default sensitivity metric was measured
    assert report["sensitivity"]["calibration"] == "wordfreq pseudo-sentences"

    model = AutoModel.from_pretrained(out)
    emb = model.get_input_embeddings()
    assert isinstance(emb, LightTokenEmbedding)
    assert emb.compression_ratio >= 4
    assert emb.compressed_nbytes == report["compressed_nbytes"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["the man read a long sentence"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
        reference = tiny_bert(**batch).last_hidden_state
    assert hidden.shape == reference.shape
    assert torch.isfinite(hidden).all()

    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["plan"]["stage_bits"] == emb.stage_bits
    assert facts["report"]["compressed_nbytes"] == emb.compressed_nbytes


def test_no_sensitivity_flag_turns_the_metric_off(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "plain"
    code = main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4", "--epochs", "1",
                 "--no-progress", "--no-sensitivity"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "lighttoken_report.json").read_text())
    assert report["settings"]["sensitivity_weighted"] is False
    assert report["sensitivity"] == {}
    assert "sensitivity metric         off" in capsys.readouterr().out


def test_joint_iterations_flag_reaches_the_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "stagewise"
    code = main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4", "--epochs", "1",
                 "--no-progress", "--no-sensitivity", "--joint-iterations", "0"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "lighttoken_report.json").read_text())
    assert report["settings"]["joint_iterations"] == 0
    assert report["joint"] == {}
    assert "joint refinement" not in capsys.readouterr().out
    assert main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4",
                 "--joint-iterations", "-1"]) != 0  # fmt: skip
    assert "joint-iterations" in capsys.readouterr().err


def test_decoder_dtype_flag_reaches_the_checkpoint(tiny_model_dir, tmp_path, capsys):
    sizes = {}
    for dtype in ("float16", "int8"):
        out = tmp_path / dtype
        code = main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4", "--epochs", "1",
                     "--no-progress", "--no-sensitivity", "--decoder-dtype", dtype])  # fmt: skip
        assert code == 0, capsys.readouterr().err
        config = json.loads((out / "config.json").read_text())
        assert config["decoder_dtype"] == dtype
        emb = LightTokenModel.from_pretrained(out).get_input_embeddings()
        assert emb.int8_decoders == (dtype == "int8")
        sizes[dtype] = sum(b for b in emb.stage_bits)
    assert sizes["int8"] > sizes["float16"]  # the bytes int8 frees become code bits
    assert main(["compress", str(tiny_model_dir), "--out", str(tmp_path / "bad"), "--decoder-dtype", "int4"]) != 0
    assert "decoder-dtype" in capsys.readouterr().err


def test_existing_non_empty_out_dir_is_refused_and_untouched(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "sub").mkdir()
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01\x02")
    before = _snapshot(out)
    code = main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4", "--epochs", "1",
                 "--no-progress"])
    assert code != 0
    assert "not empty" in capsys.readouterr().err
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".taken")) == []


@pytest.mark.parametrize("ratio", ["1", "0.5", "abc", "nan"])
def test_bad_ratio_is_a_usage_error(tiny_model_dir, tmp_path, ratio):
    out = tmp_path / "out"
    assert main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", ratio]) == 2
    assert not out.exists()


@pytest.mark.parametrize("device", ["gpu", "cuda:x"])
def test_bad_device_is_a_usage_error(tiny_model_dir, tmp_path, capsys, device):
    out = tmp_path / "out"
    assert main(["compress", str(tiny_model_dir), "--out", str(out), "--device", device]) == 2
    assert "--device" in capsys.readouterr().err
    assert not out.exists()


def test_missing_model_folder_is_a_usage_error(tmp_path):
    out = tmp_path / "out"
    assert main(["compress", str(tmp_path / "nowhere" / "model"), "--out", str(out)]) == 2
    assert not out.exists()


def _console(args, cwd):
    """Run the installed ``lighttoken`` console entry point (``lighttoken_hf_cli:main``) in a fresh process."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, lighttoken_hf_cli\n"
        f"sys.argv = ['lighttoken', *{list(args)!r}]\n"
        "code = lighttoken_hf_cli.main()\n"
        "print('IMPORTED', 'torch' in sys.modules, 'transformers' in sys.modules, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_help_and_version_start_without_importing_torch(tmp_path):
    for args in (["--help"], ["compress", "--help"], ["--version"]):
        result = _console(args, tmp_path)
        assert result.returncode == 0, result.stderr
        assert "IMPORTED False False" in result.stderr, (args, result.stderr)
    assert "--ratio" in _console(["compress", "--help"], tmp_path).stdout


def test_console_entry_point_registers_before_a_command(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4", "--epochs", "1",
                 "--no-progress"]) == 0  # fmt: skip
    result = _console(["info", str(out), "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["plan"]["num_embeddings"] == 200
