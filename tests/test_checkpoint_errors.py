"""Damaged checkpoints fail loudly (naming the tensor and the file); a mismatched tokenizer is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAST_SCHEDULE
from safetensors.torch import load_file, save_file
from tiny_models import tiny_bert_config
from transformers import AutoModel, BertModel

import lighttoken_hf as lt

EMB = "backbone.embeddings.word_embeddings."


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved compressed tiny BERT (one hashing stage, so ``codes_0`` and ``decoder_0_*`` exist)."""
    config = tiny_bert_config()
    torch.manual_seed(0)
    model = lt.compress(BertModel(config), ratio=4, schedule=FAST_SCHEDULE, progress=False)
    assert model.get_input_embeddings().stage_bits, "the test needs at least one hashing stage"
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder)
    return folder


def _edit(folder, edit):
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def test_intact_checkpoint_loads_and_keeps_output_loading_info(saved):
    model = AutoModel.from_pretrained(saved)
    assert isinstance(model, lt.LightTokenModel)
    model, info = AutoModel.from_pretrained(saved, output_loading_info=True)
    assert isinstance(model, lt.LightTokenModel)
    assert not info["missing_keys"] and not info["mismatched_keys"]


@pytest.mark.parametrize("name", ["codes_0", "decoder_0_qweight", "decoder_0_scale", "padding_row"])
def test_missing_compressed_tensor_names_tensor_and_file(saved, tmp_path, name):
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    path = _edit(folder, lambda t: t.pop(EMB + name))
    # transformers alone would only warn and leave the tensor uninitialised
    with pytest.raises(OSError, match=f"{EMB + name}'") as err:
        AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert path in str(err.value)


def test_the_check_ships_with_the_remote_code(saved, tmp_path):
    """Without lighttoken_hf installed, the checkpoint's own modeling_lighttoken.py raises the error."""
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    path = _edit(folder, lambda t: t.pop(EMB + "codes_0"))
    script = textwrap.dedent(
        """
        import sys
        sys.modules["lighttoken_hf"] = None  # not importable: the remote code must do the work
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
        except OSError as err:
            tb = err.__traceback__
            while tb.tb_next:
                tb = tb.tb_next
            print(tb.tb_frame.f_code.co_filename, err)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"{EMB}codes_0" in result.stdout and path in result.stdout
    raised_in = result.stdout.split()[0]  # the checkpoint's copy of the code, in HF_MODULES_CACHE
    assert raised_in.startswith(str(tmp_path / "modules")) and raised_in.endswith("modeling_lighttoken.py")


def test_wrong_shape_names_tensor_file_and_shapes(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    path = _edit(folder, lambda t: t.update({EMB + "decoder_0_qweight": t[EMB + "decoder_0_qweight"][:5]}))
    with pytest.raises(ValueError, match=rf"{EMB}decoder_0_qweight") as err:
        AutoModel.from_pretrained(folder)
    assert path in str(err.value) and "(5, 32)" in str(err.value)
    # the embedding must be right even when the caller tolerates other size mismatches
    with pytest.raises(ValueError, match="decoder_0_qweight"):
        AutoModel.from_pretrained(folder, ignore_mismatched_sizes=True)


def test_wrong_shape_outside_the_embedding_still_raises_unless_ignored(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    key = "backbone.pooler.dense.bias"
    _edit(folder, lambda t: t.update({key: t[key][:5]}))
    with pytest.raises(RuntimeError, match=key):
        AutoModel.from_pretrained(folder)
    model, info = AutoModel.from_pretrained(folder, ignore_mismatched_sizes=True, output_loading_info=True)
    assert [k for k, *_ in info["mismatched_keys"]] == [key]


@pytest.mark.parametrize("keep", [4, 100, -10])
def test_truncated_file_names_the_file(saved, tmp_path, keep):
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep])
    with pytest.raises(OSError, match="truncated or corrupted") as err:
        AutoModel.from_pretrained(folder)
    assert path in str(err.value)


def test_tokenizer_larger_than_the_embedding_is_refused(tiny_vocab_file):
    from transformers import BertTokenizer

    # transformers 5 ignores the ``vocab_file=`` of conftest's tokenizer (it has 5 tokens): pass vocab=
    tokenizer = BertTokenizer(vocab=tiny_vocab_file, do_lower_case=True)

    config = tiny_bert_config(vocab_size=150)  # the tiny tokenizer has 200 tokens
    model = BertModel(config)
    assert len(tokenizer) == 200
    fewer = BertTokenizer(vocab={"[PAD]": 0, "[UNK]": 1})  # fewer tokens than rows is fine
    lt.compress(model, ratio=4, tokenizer=fewer, schedule=FAST_SCHEDULE, progress=False)
    with pytest.raises(ValueError, match=r"200 tokens.*only 150 rows.*resize_token_embeddings"):
        lt.compress(model, ratio=4, tokenizer=tokenizer, schedule=FAST_SCHEDULE, progress=False)
    with pytest.raises(ValueError, match="200 tokens"):
        lt.compress(torch.randn(150, 32), ratio=4, tokenizer=tokenizer, progress=False)
