"""Bad input to compress(): every case a clear error (what is wrong, what to do), before any long work."""

from __future__ import annotations

import pytest
import torch
from conftest import FAST_SCHEDULE
from tiny_models import tiny_bert_config
from transformers import BertModel

import lighttoken_hf as lt

pytestmark = pytest.mark.usefixtures("single_thread")


def _matrix(rows: int = 300, dim: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))


def _compress(matrix, **options):
    options = {"ratio": 4, "schedule": FAST_SCHEDULE, "progress": False, "joint_iterations": 0, **options}
    return lt.compress(matrix, **options)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"ratio": "25"}, TypeError, "ratio must be a number"),
        ({"seed": "a"}, TypeError, "seed must be an int"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"factor_dtype": "int8"}, ValueError, "factor_dtype must be one of"),
        ({"decoder_dtype": "int4"}, ValueError, "decoder_dtype must be one of"),
        ({"tier_decay": 1.5}, ValueError, "tier_decay must be a finite number in"),
        ({"tier_decay": 0}, ValueError, "tier_decay"),
        ({"frequency_power": float("nan")}, ValueError, "frequency_power must be a finite number"),
        ({"frequency_aware": "no"}, TypeError, "frequency_aware must be True or False"),
        ({"joint_iterations": -1}, ValueError, "joint_iterations must be >= 0"),
        ({"schedule": {"max_epochs": "3"}}, TypeError, "schedule.max_epochs must be an int"),
        ({"schedule": {"epochs": 3}}, TypeError, "unknown schedule option"),
        ({"loss": "l1"}, ValueError, "loss must be one of"),
    ],
)
def test_a_bad_setting_is_a_clear_error(options, error, match):
    with pytest.raises(error, match=match):
        _compress(_matrix(), **options)


def test_a_budget_at_or_above_the_dense_size_is_refused():
    dense = 300 * 16 * 4
    for budget in (dense, 2 * dense, 10**12):
        with pytest.raises(ValueError, match="no compression"):
            _compress(_matrix(), ratio=None, budget_bytes=budget)


def test_an_impossible_ratio_names_the_largest_possible_one():
    with pytest.raises(ValueError, match=r"largest ratio possible for this matrix is (\d+\.\d)") as err:
        _compress(_matrix(), ratio=10000)
    largest = float(err.value.args[0].split("largest ratio possible for this matrix is ")[1].split(" ")[0])
    assert 1 < largest < 10000
    _compress(_matrix(), ratio=largest * 0.9, svd_rank=0, frequency_aware=False)  # what it names is possible


class _Untouchable(list):
    """Calibration texts that fail the test if anything reads them."""

    def __iter__(self):
        raise AssertionError("the sensitivity metric was computed before the ratio was checked")


def test_an_impossible_ratio_fails_before_the_model_is_measured():
    model = BertModel(tiny_bert_config())
    with pytest.raises(ValueError, match="largest ratio possible"):
        lt.compress(
            model, ratio=10000, calibration_texts=_Untouchable(), progress=False, frequency_aware=False
        )


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        (torch.zeros(300, 16), "all zeros"),
        (_matrix() * 1e30, "too large"),
    ],
)
def test_a_matrix_that_cannot_be_compressed_is_refused(matrix, match):
    with pytest.raises(ValueError, match=match):
        _compress(matrix)


def test_values_fp16_factors_cannot_hold_ask_for_a_wider_dtype():
    with pytest.raises(ValueError, match='factor_dtype="float32"'):
        _compress(_matrix() * 1e5)
    module = _compress(_matrix() * 1e5, factor_dtype="float32")
    assert torch.isfinite(module.weight).all()


@pytest.mark.parametrize(
    ("frequencies", "match"),
    [
        (torch.full((300,), float("nan")), "NaN or Inf"),
        (torch.zeros(300), "all zero"),
        (-torch.ones(300), "must be >= 0"),
        (torch.ones(299), "300 rows"),
        (["a"] * 300, "must be"),
    ],
)
def test_bad_token_frequencies_are_refused(frequencies, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _compress(_matrix(), token_frequencies=frequencies)


@pytest.mark.parametrize(
    ("sensitivity", "match"),
    [
        (torch.zeros(16, 16), "all zeros"),
        (-torch.eye(16), "not positive semi-definite"),
        (torch.triu(torch.ones(16, 16)), "not symmetric"),
        (torch.eye(15), "16 x 16"),
        (torch.full((16, 16), float("nan")), "NaN or Inf"),
    ],
)
def test_a_bad_sensitivity_metric_is_refused(sensitivity, match):
    with pytest.raises(ValueError, match=match):
        _compress(_matrix(), sensitivity=sensitivity)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_matrix_gives_lookups_in_its_dtype(dtype):
    matrix = _matrix().to(dtype)
    module = _compress(matrix)
    ids = torch.tensor([[1, 2, 3]])
    assert module(ids).dtype == torch.nn.Embedding.from_pretrained(matrix)(ids).dtype == dtype


def test_a_mistyped_bare_model_name_offline_is_refused_at_once(tmp_path, capsys):
    from lighttoken_hf.cli import main

    code = main(
        ["compress", "bert-base-uncsed", "--out", str(tmp_path / "out"), "--ratio", "4", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "no such local folder" in err and "offline" in err and "./bert-base-uncsed" in err
    assert not (tmp_path / "out").exists()


def test_a_bare_model_name_the_hub_cannot_confirm_is_refused_at_once(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from lighttoken_hf.cli import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    code = main(
        ["compress", "bert-base-uncsed", "--out", str(tmp_path / "out"), "--ratio", "4", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "no such local folder" in err and "cannot be reached" in err and "./bert-base-uncsed" in err


def test_a_truncated_source_model_is_one_line_from_the_cli(tiny_model_dir, tmp_path, capsys):
    import shutil

    from lighttoken_hf.cli import main

    source = shutil.copytree(tiny_model_dir, tmp_path / "source")
    weights = source / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code = main(["compress", str(source), "--out", str(tmp_path / "out"), "--ratio", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines()[-1].startswith("error: cannot read the weights") and "Traceback" not in err
    assert "truncated or damaged" in err
    assert not (tmp_path / "out").exists()


def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import safetensors
    import transformers.modeling_utils

    from lighttoken_hf.cli import main

    def full_disk(*args, **kwargs):  # what safetensors raises when the disk fills (os error 28)
        raise safetensors.SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_disk)
    out = tmp_path / "out"
    code = main(["compress", str(tiny_model_dir), "--out", str(out), "--ratio", "4", "--epochs", "1",
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines()[-1].startswith("error: a safetensors file could not be written") and "Traceback" not in err
    assert "disk full" in err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
