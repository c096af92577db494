"""Compressing a sentence-transformers model keeps its modules: the output loads with SentenceTransformer.

Built on a tiny sentence-transformers folder (tiny random BERT + tiny WordPiece tokenizer + Pooling, with
or without Normalize), so everything runs in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import FAST_SCHEDULE
from hub_server import LocalHub

import lighttoken_hf
from lighttoken_hf.checkpoint import checkpoint_info
from lighttoken_hf.cli import main
from lighttoken_hf.saving import save_compressed
from lighttoken_hf.sentence_transformers_support import (
    is_sentence_transformers_dir,
    sentence_transformers_layout,
)

pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")

SENTENCES = [
    "the man read a long sentence",
    "water is good for people",
    "how many people live in this house?",
    "a",
]
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


def _build_st_folder(root, model, tokenizer, normalize, dense=False):
    """Save ``model`` + ``tokenizer`` as a sentence-transformers folder.

    Modules: Transformer, mean Pooling[, Dense 32 -> 16 (seeded)][, Normalize].
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    hf_dir = root / "hf"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    modules = [Transformer(str(hf_dir)), Pooling(model.config.hidden_size, pooling_mode="mean")]
    if dense:
        torch.manual_seed(0)
        modules.append(Dense(model.config.hidden_size, 16))
    if normalize:
        modules.append(Normalize())
    st_dir = root / ("st-normalized" if normalize else "st") if not dense else root / "st-dense"
    SentenceTransformer(modules=modules, device="cpu").save(str(st_dir))
    return st_dir


@pytest.fixture(params=[True, False], ids=["normalize", "no-normalize"])
def st_dir(request, tmp_path, tiny_bert, tiny_tokenizer):
    return _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=request.param)


def _normalizes(folder) -> bool:
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    return any(m["type"].endswith("Normalize") for m in modules)


def _own_embeddings(folder, normalize):
    """Mean pooling (with the attention mask) of the compressed model's last_hidden_state, as saved."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    assert isinstance(model.get_input_embeddings(), lighttoken_hf.LightTokenEmbedding)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled


def _st_embeddings(folder):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    return model.encode(SENTENCES, convert_to_tensor=True).float()


def _check_st_checkpoint(out, source):
    for name in ST_FILES:
        assert (out / name).is_file(), name
    assert json.loads((out / "modules.json").read_text()) == json.loads((source / "modules.json").read_text())
    assert (out / "1_Pooling" / "config.json").read_text() == (source / "1_Pooling" / "config.json").read_text()
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    assert (out / "2_Normalize").exists() == (source / "2_Normalize").exists()
    assert json.loads((out / "config.json").read_text())["model_type"] == "lighttoken"

    normalize = _normalizes(source)
    got = _st_embeddings(out)
    expected = _own_embeddings(out, normalize)
    assert got.shape == expected.shape == (len(SENTENCES), 32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if normalize:
        torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(SENTENCES)), rtol=0, atol=1e-5)
    return got


def test_save_compressed_with_source_dir_writes_a_sentence_transformers_model(st_dir, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    assert is_sentence_transformers_dir(st_dir)
    model = AutoModel.from_pretrained(st_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(st_dir)
    compressed = lighttoken_hf.compress(model, ratio=4, schedule=FAST_SCHEDULE, progress=False)

    out = save_compressed(compressed, tmp_path / "out", tokenizer=tokenizer, source_dir=st_dir)
    _check_st_checkpoint(out, st_dir)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_cli_keeps_the_sentence_transformers_modules(tmp_path, tiny_bert, tiny_tokenizer, capsys):
    source = _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=True)
    out = tmp_path / "out"
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    code = main(["compress", str(source), "--out", str(out), "--ratio", "4", "--epochs", "1", "--no-progress",
                 "--sentences", str(sentences)])
    assert code == 0, capsys.readouterr().err
    assert "sentence-transformers model" in capsys.readouterr().err
    got = _check_st_checkpoint(out, source)

    assert main(["info", str(out), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["sentence_transformers_modules"] == ["Transformer", "Pooling", "Normalize"]
    assert main(["info", str(out)]) == 0
    assert "Transformer -> Pooling -> Normalize" in capsys.readouterr().out

    # The way users load it: a fresh interpreter that never imports lighttoken_hf (remote code only).
    script = (
        "import json, sys\n"
        "from sentence_transformers import SentenceTransformer\n"
        "model = SentenceTransformer(sys.argv[1], trust_remote_code=True, device='cpu')\n"
        "assert 'lighttoken_hf' not in sys.modules\n"
        "assert type(model[0].model).__module__.startswith('transformers_modules'), type(model[0].model)\n"
        "print(json.dumps(model.encode(json.loads(sys.argv[2])).tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(out), json.dumps(SENTENCES)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fresh = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(fresh, got, rtol=0, atol=1e-5)


def test_a_plain_transformers_source_gets_no_sentence_transformers_files(tiny_bert, tiny_tokenizer, tmp_path):
    source = tmp_path / "plain"
    tiny_bert.save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    assert not is_sentence_transformers_dir(source)
    assert sentence_transformers_layout(source) is None
    compressed = lighttoken_hf.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)

    for out, source_dir in ((tmp_path / "with-source", source), (tmp_path / "without-source", None)):
        save_compressed(compressed, out, tokenizer=tiny_tokenizer, source_dir=source_dir)
        names = {p.relative_to(out).as_posix() for p in out.rglob("*")}
        assert not names & {*ST_FILES, "1_Pooling"}, names
        assert "config.json" in names
        assert checkpoint_info(out)["sentence_transformers_modules"] is None


def test_the_source_tokenizer_is_saved_when_none_is_given(tmp_path, tiny_bert, tiny_tokenizer):
    source = _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=True)
    compressed = lighttoken_hf.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)
    out = save_compressed(compressed, tmp_path / "out", source_dir=source)
    assert (out / "tokenizer_config.json").is_file()
    _check_st_checkpoint(out, source)


def test_an_old_layout_transformer_folder_is_moved_to_the_root(tmp_path, tiny_bert, tiny_tokenizer):
    """sentence-transformers 0.x kept the transformer in ``0_Transformer/``; the output has it at the root."""
    from transformers import AutoModel, AutoTokenizer

    new = _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=False)
    old = tmp_path / "old"
    (old / "0_Transformer").mkdir(parents=True)
    for path in new.iterdir():
        if path.name in ("modules.json", "config_sentence_transformers.json", "README.md"):
            shutil.copy2(path, old / path.name)
        elif path.is_dir():
            shutil.copytree(path, old / path.name)
        else:
            shutil.copy2(path, old / "0_Transformer" / path.name)
    modules = json.loads((old / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (old / "modules.json").write_text(json.dumps(modules))

    model = AutoModel.from_pretrained(old / "0_Transformer").eval()
    compressed = lighttoken_hf.compress(model, ratio=4, schedule=FAST_SCHEDULE, progress=False)
    out = save_compressed(compressed, tmp_path / "out", tokenizer=AutoTokenizer.from_pretrained(new), source_dir=old)
    assert not (out / "0_Transformer").exists()
    assert json.loads((out / "modules.json").read_text())[0]["path"] == ""
    _check_st_checkpoint(out, new)


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_a_failed_copy_leaves_nothing_behind(tmp_path, tiny_bert, tiny_tokenizer, monkeypatch, exc):
    import lighttoken_hf.sentence_transformers_support as support

    source = _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=True)
    compressed = lighttoken_hf.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)
    parent = tmp_path / "models"
    parent.mkdir()

    def boom(*args, **kwargs):
        raise exc("interrupted while copying the pooling module")

    monkeypatch.setattr(support.shutil, "copytree", boom)
    with pytest.raises(exc, match="interrupted"):
        save_compressed(compressed, parent / "out", tokenizer=tiny_tokenizer, source_dir=source)
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize(
    "modules",
    [
        [{"idx": 0, "name": "0", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}],
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "../elsewhere", "type": "sentence_transformers.models.Pooling"},
        ],
        {"not": "a list"},
    ],
    ids=["no-transformer", "path-outside", "not-a-list"],
)
def test_cli_refuses_an_unsupported_sentence_transformers_model_before_working(
    tmp_path, tiny_bert, tiny_tokenizer, capsys, modules
):
    source = tmp_path / "model"
    tiny_bert.save_pretrained(source)
    tiny_tokenizer.save_pretrained(source)
    (source / "modules.json").write_text(json.dumps(modules))
    out = tmp_path / "out"
    code = main(["compress", str(source), "--out", str(out), "--ratio", "4", "--epochs", "1", "--no-progress"])
    assert code == 2
    assert "modules.json" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("filename", "config", "message"),
    [
        ("config_sentence_transformers.json", {"model_type": "CrossEncoder"}, "CrossEncoder"),
        ("sentence_bert_config.json", {"transformer_task": "sequence-classification"}, "sequence-classification"),
    ],
)
def test_models_that_are_not_sentence_embedders_are_refused(tmp_path, tiny_bert, tiny_tokenizer, filename,
                                                            config, message):
    source = _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=False)
    (source / filename).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        sentence_transformers_layout(source)


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    """A local stand-in for the Hub (tests/hub_server.py), for this process's huggingface_hub and transformers."""
    import transformers.utils.hub
    from huggingface_hub import constants

    with LocalHub() as hub:
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest makes the rest of the suite offline
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the local hub speaks LFS, not Xet
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # transformers caches an HfApi
        yield hub
        assert hub.unhandled == [], f"requests the local hub does not implement: {hub.unhandled}"


def test_cli_keeps_the_modules_of_a_hub_model(hub_env, tmp_path, tiny_bert, tiny_tokenizer, capsys):
    from huggingface_hub import HfApi

    hub = hub_env
    source = _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=True)
    plain = tmp_path / "plain"
    tiny_bert.save_pretrained(plain)
    tiny_tokenizer.save_pretrained(plain)
    api = HfApi(endpoint=hub.url, token=hub.token)
    st_repo, plain_repo = f"{hub.user}/tiny-st", f"{hub.user}/tiny-plain"
    for repo, folder in ((st_repo, source), (plain_repo, plain)):
        api.create_repo(repo)
        api.upload_folder(repo_id=repo, folder_path=folder)
    sentences = tmp_path / "sentences.txt"
    sentences.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    args = ["--ratio", "4", "--epochs", "1", "--no-progress", "--sentences", str(sentences)]

    out = tmp_path / "out"
    assert main(["compress", st_repo, "--out", str(out), *args]) == 0, capsys.readouterr().err
    assert "sentence-transformers model" in capsys.readouterr().err
    _check_st_checkpoint(out, source)

    plain_out = tmp_path / "plain-out"
    assert main(["compress", plain_repo, "--out", str(plain_out), *args]) == 0, capsys.readouterr().err
    assert not (plain_out / "modules.json").exists()
    assert (plain_out / "config.json").is_file()


def test_sentence_transformers_sees_the_compute_dtype_not_the_fp16_storage(
    tmp_path, tiny_bert, tiny_tokenizer, caplog
):
    """sentence-transformers takes a model's dtype from its first parameter: it must be a compute parameter.

    ``SentenceTransformer.dtype`` is ``next(model.parameters()).dtype``; it warns "This model was loaded in
    torch.float16 on CPU" when that is fp16 and casts every module after the transformer (here a Dense
    layer) to it. The compressed embedding's fp16 factors must therefore not come first.
    """
    import logging

    from sentence_transformers import SentenceTransformer

    source = _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=False, dense=True)
    compressed = lighttoken_hf.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)
    assert next(compressed.parameters()).dtype == torch.float32
    assert next(compressed.backbone.parameters()).dtype == torch.float32
    assert compressed.get_input_embeddings().lowrank_left.dtype == torch.float16  # the storage is still fp16
    out = save_compressed(compressed, tmp_path / "out", tokenizer=tiny_tokenizer, source_dir=source)

    logging.Logger.warning_once.cache_clear()  # transformers' warn-once cache would hide a repeat
    with caplog.at_level(logging.WARNING):
        model = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
    assert model.dtype == torch.float32
    assert not [r for r in caplog.records if "was loaded in" in r.getMessage()], caplog.text
    dense = model[2]
    assert type(dense).__name__ == "Dense"
    assert dense.linear.weight.dtype == torch.float32
    source_dense = SentenceTransformer(str(source), device="cpu")[2]
    assert torch.equal(dense.linear.weight, source_dense.linear.weight)  # not rounded through fp16

    got = model.encode(SENTENCES, convert_to_tensor=True)
    assert got.dtype == torch.float32 and got.shape == (len(SENTENCES), 16)
    with torch.no_grad():
        expected = dense({"sentence_embedding": _own_embeddings(out, normalize=False)})["sentence_embedding"]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

    bf16 = SentenceTransformer(
        str(out), trust_remote_code=True, device="cpu", model_kwargs={"dtype": torch.bfloat16}
    )
    assert bf16.dtype == torch.bfloat16  # an explicit compute dtype is reported as such


def test_the_card_of_a_sentence_transformers_checkpoint_shows_a_runnable_snippet(tmp_path, tiny_bert,
                                                                                 tiny_tokenizer):
    import ast
    import re

    from huggingface_hub import ModelCard

    from lighttoken_hf.cards import CARD_TAGS, model_card

    source = _build_st_folder(tmp_path, tiny_bert, tiny_tokenizer, normalize=True)
    compressed = lighttoken_hf.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)
    out = save_compressed(compressed, tmp_path / "out", tokenizer=tiny_tokenizer, source_dir=source)

    card = ModelCard.load(out / "README.md")  # the YAML metadata parses back
    assert card.data.tags == [*CARD_TAGS, "sentence-transformers"]
    assert card.data.library_name == "transformers"
    assert "Transformer -> Pooling -> Normalize" in card.text
    blocks = re.findall(r"```python\n(.*?)```", card.text, flags=re.S)
    st_blocks = [b for b in blocks if "SentenceTransformer(" in b]
    assert len(st_blocks) == 1, blocks
    assert 'SentenceTransformer("path/to/this-checkpoint", trust_remote_code=True)' in st_blocks[0]

    # run the card's snippets as written, on this folder
    for block in blocks[:2]:  # the sentence-transformers snippet, then the transformers one
        namespace: dict = {}
        exec(block.replace("path/to/this-checkpoint", str(out)), namespace)  # noqa: S102 - our own card
        if block is st_blocks[0]:
            embeddings = torch.as_tensor(namespace["embeddings"])
            sentences = re.search(r"model\.encode\((\[.*?\])\)", block).group(1)
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(out), trust_remote_code=True, device="cpu")
            expected = model.encode(ast.literal_eval(sentences))
            assert embeddings.shape == (2, 32)
            torch.testing.assert_close(embeddings, torch.as_tensor(expected), rtol=0, atol=1e-6)
            assert torch.as_tensor(namespace["similarities"]).shape == (2, 2)
        else:
            assert namespace["outputs"].last_hidden_state.shape[-1] == 32

    # published under a repo id, the snippet names it; a plain checkpoint gets no sentence-transformers one
    published = model_card(out, repo_id="org/tiny-st").text
    assert 'SentenceTransformer("org/tiny-st", trust_remote_code=True)' in published
    plain = model_card(compressed)
    assert "SentenceTransformer" not in plain.text
    assert plain.data.tags == list(CARD_TAGS)
