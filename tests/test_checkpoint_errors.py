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
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
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


def _flip_data_byte(path, tensor_name: str, offset: int = 0) -> None:
    """Flip one byte of ``tensor_name``'s data in a safetensors file, in place (its header untouched)."""
    import json
    import struct

    with open(path, "r+b") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        start, stop = header[tensor_name]["data_offsets"]
        assert start + offset < stop
        f.seek(8 + header_len + start + offset)
        byte = f.read(1)[0]
        f.seek(8 + header_len + start + offset)
        f.write(bytes([byte ^ 0x10]))


def test_checksums_are_saved_for_every_compressed_tensor(saved):
    import json

    config = json.loads((saved / "config.json").read_text())
    model = AutoModel.from_pretrained(saved)
    embedding = model.get_input_embeddings()
    assert config["checksums"] == {"input": embedding.checksums(), "input_layout": embedding.layout()}
    assert set(config["checksums"]["input"]) == set(model.get_input_embeddings().state_dict())


@pytest.mark.parametrize("name", ["codes_0", "decoder_0_qweight", "decoder_0_scale", "decoder_0_bias"])
def test_a_flipped_data_byte_is_an_error_naming_the_tensor(saved, tmp_path, name):
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    _flip_data_byte(folder / "model.safetensors", EMB + name)
    with pytest.raises(ValueError, match=f"'{EMB + name}'.*corrupted"):
        AutoModel.from_pretrained(folder)


def test_a_tensor_stored_in_another_dtype_is_an_error(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    _edit(
        folder, lambda t: t.__setitem__(EMB + "decoder_0_bias", t[EMB + "decoder_0_bias"].to(torch.bfloat16))
    )
    with pytest.raises(ValueError, match="decoder_0_bias"):
        AutoModel.from_pretrained(folder)


def test_a_model_saved_again_after_training_gets_new_checksums(saved, tmp_path):
    model = AutoModel.from_pretrained(saved)
    with torch.no_grad():
        model.get_input_embeddings().decoder_0_bias.add_(0.01)
    model.save_pretrained(tmp_path / "again")
    again = AutoModel.from_pretrained(tmp_path / "again")
    assert torch.equal(
        again.get_input_embeddings().decoder_0_bias, model.get_input_embeddings().decoder_0_bias
    )


def _edit_config(folder, edit) -> None:
    import json

    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("field", "value"),
    [("padding_idx", 3), ("stage_bits", []), ("num_embeddings", 150), ("decoder_dtype", "float16")],
)  # fmt: skip
def test_an_edited_config_field_is_an_error_naming_config_json(saved, tmp_path, field, value):
    folder = shutil.copytree(saved, tmp_path / "ckpt")

    def edit(config):
        config[field] = value
        if field == "stage_bits":
            config["stage_rows"] = []

    _edit_config(folder, edit)
    with pytest.raises(ValueError, match=f"config.json.*{field}"):
        AutoModel.from_pretrained(folder)


def test_tensors_the_config_does_not_describe_blame_config_json(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "ckpt")

    def edit(config):  # an older checkpoint without recorded checksums: the tensors still disagree
        config.pop("checksums")
        config["stage_bits"], config["stage_rows"] = [], []

    _edit_config(folder, edit)
    with pytest.raises(ValueError, match="codes_0.*config.json"):
        AutoModel.from_pretrained(folder)


# ---------------------------------------------------------------------------------------- fuzzing
_LAYOUT_FIELDS = ("num_embeddings", "embedding_dim", "svd_rank", "stage_bits", "stage_rows", "padding_idx",
                  "factor_dtype", "decoder_dtype", "row_index", "embedding_scale")  # fmt: skip
_SAME_SIZE_DTYPES = {"F16": "BF16", "BF16": "F16", "U8": "I8", "I8": "U8", "F32": "I32", "I32": "F32"}


def _read_safetensors(path):
    import json
    import struct

    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _write_safetensors(path, header, body) -> None:
    import json
    import struct

    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


@pytest.fixture(scope="module")
def reference_output(saved):
    model = AutoModel.from_pretrained(saved)
    ids = torch.arange(0, 200, 4).unsqueeze(0)  # 50 ids, every 4th token
    with torch.no_grad():
        return ids, model(input_ids=ids).last_hidden_state


def _corrupt_loads_loudly_or_equal(folder, reference) -> None:
    ids, expected = reference
    try:
        model = AutoModel.from_pretrained(folder)
        with torch.no_grad():
            out = model(input_ids=ids).last_hidden_state
    except (ValueError, OSError, RuntimeError, TypeError, IndexError) as err:
        message = str(err)
        assert len(message) > 20 and "\n" not in message.strip()[:20], message  # a sentence, not a bare value
        return
    assert torch.equal(out, expected), "a corrupted checkpoint loaded and gives different outputs"


@given(data=st.data())
@hyp_settings(max_examples=25)
def test_random_corruption_fails_loudly_or_changes_nothing(saved, reference_output, tmp_path_factory, data):
    import json

    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(saved, folder, dirs_exist_ok=True)
    weights = folder / "model.safetensors"
    header, body = _read_safetensors(weights)
    names = sorted(
        k for k in header if k.startswith(EMB) and header[k]["data_offsets"][1] > header[k]["data_offsets"][0]
    )
    kind = data.draw(st.sampled_from(["byte", "dtype", "shape", "config"]), label="kind")
    if kind == "byte":
        name = data.draw(st.sampled_from(names), label="tensor")
        start, stop = header[name]["data_offsets"]
        at = data.draw(st.integers(start, stop - 1), label="offset")
        bit = data.draw(st.integers(0, 7), label="bit")
        body = body[:at] + bytes([body[at] ^ (1 << bit)]) + body[at + 1 :]
        _write_safetensors(weights, header, body)
    elif kind == "dtype":
        name = data.draw(st.sampled_from(names), label="tensor")
        header[name]["dtype"] = _SAME_SIZE_DTYPES.get(header[name]["dtype"], header[name]["dtype"])
        _write_safetensors(weights, header, body)
    elif kind == "shape":
        name = data.draw(st.sampled_from([n for n in names if len(header[n]["shape"]) == 2]), label="tensor")
        header[name]["shape"] = header[name]["shape"][::-1]
        _write_safetensors(weights, header, body)
    else:
        config = json.loads((folder / "config.json").read_text())
        field = data.draw(st.sampled_from(_LAYOUT_FIELDS), label="field")
        value = data.draw(
            st.one_of(st.none(), st.integers(-2, 300), st.lists(st.integers(0, 300), max_size=3),
                      st.sampled_from(["float16", "bfloat16", "int8", "coverage", "ranks"])),
            label="value",
        )  # fmt: skip
        config[field] = value
        (folder / "config.json").write_text(json.dumps(config))
    _corrupt_loads_loudly_or_equal(folder, reference_output)


def test_a_missing_backbone_tensor_is_an_error_not_a_random_init(saved, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    name = "backbone.encoder.layer.0.attention.self.query.weight"
    _edit(folder, lambda t: t.pop(name))
    with pytest.raises(OSError, match=f"no tensor '{name}'.*randomly initialised"):
        AutoModel.from_pretrained(folder)


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_info_on_a_truncated_checkpoint_fails(saved, tmp_path, capsys, json_flag):
    from lighttoken_hf.cli import main

    folder = shutil.copytree(saved, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert main(["info", str(folder), *json_flag]) != 0
    assert "incomplete" in capsys.readouterr().err
