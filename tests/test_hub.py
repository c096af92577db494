"""Model cards and publishing: the card's contents and metadata, ``lighttoken info`` / ``lighttoken push``,
and loading a pushed checkpoint by repo id in a Python that cannot import lighttoken_hf.

Pushes and downloads go through huggingface_hub's real HTTP client to ``tests/hub_server.py``, a local
stand-in for the Hub API (127.0.0.1, random port, background thread).
"""

from __future__ import annotations

import copy
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import FAST_SCHEDULE
from hub_server import LocalHub
from huggingface_hub import EvalResult, HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import load_file, save_file

import lighttoken_hf
from lighttoken_hf.cards import TEMPLATE_NAME, card_facts, hub_model_id, model_card
from lighttoken_hf.checkpoint import REMOTE_CODE_FILES, REPORT_FILENAME
from lighttoken_hf.cli import main
from lighttoken_hf.hub import push_to_hub
from lighttoken_hf.saving import save_compressed

REPO_ROOT = Path(__file__).resolve().parents[1]
BASE_ID = "google-bert/bert-base-uncased"
TEXT = "the man read a long sentence"
SUBPROCESS_TIMEOUT = 600

#: Loads models (by repo id or from a folder) in a Python started with ``-I -S`` and only site-packages on
#: sys.path: the editable install's import hook (a .pth file) is not run and the repo is not on the path,
#: so lighttoken_hf cannot be imported and only the checkpoint's remote code can build the model.
#: ``spec["loads"]``: [name, transformers Auto class, repo id or folder, output fields to save].
LOADER = r"""
import importlib.util, json, sys

spec = json.load(open(sys.argv[1], encoding="utf-8"))
sys.path.extend(spec["site_packages"])
assert importlib.util.find_spec("lighttoken_hf") is None, "lighttoken_hf is importable"
try:
    import lighttoken_hf  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("import lighttoken_hf succeeded")

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

batch = load_file(spec["inputs"])
outputs, facts = {}, {}
for name, auto_class, source, fields in spec["loads"]:
    model = getattr(transformers, auto_class).from_pretrained(source, trust_remote_code=True).eval()
    with torch.no_grad():
        out = model(**batch)
    for field in fields:
        outputs[f"{name}.{field}"] = out[field].contiguous()
    facts[name] = {
        "class": type(model).__module__ + "." + type(model).__name__,
        "embedding": type(model.get_input_embeddings()).__name__,
    }
    if name in spec["tokenizers"]:
        facts[name]["ids"] = AutoTokenizer.from_pretrained(source)(spec["text"])["input_ids"]
facts["lighttoken_hf_modules"] = sorted(m for m in sys.modules if m.startswith("lighttoken_hf"))
save_file(outputs, spec["outputs"])
json.dump(facts, open(spec["facts"], "w", encoding="utf-8"))
"""


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def hub():
    with LocalHub() as server:
        yield server


@pytest.fixture
def hub_env(hub, monkeypatch, tmp_path):
    """Point this process's huggingface_hub (and transformers) at the local hub for one test."""
    import transformers.utils.hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest makes the rest of the suite offline
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # hf_xet is installed: use the LFS protocol
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(tmp_path / "agent_harnesses.json"))
    monkeypatch.setattr(
        transformers.utils.hub, "_hf_api", None
    )  # transformers caches an HfApi (and its endpoint)
    yield hub
    assert hub.unhandled == [], f"requests the local hub does not implement: {hub.unhandled}"


@pytest.fixture
def compressed(tiny_bert):
    return lighttoken_hf.compress(tiny_bert, ratio=4, schedule=FAST_SCHEDULE, progress=False)


def _eval_results():
    return [
        EvalResult(
            task_type="sentence-similarity",
            dataset_type="mteb/stsbenchmark-sts",
            dataset_name="STS Benchmark",
            dataset_split="test",
            metric_type="spearman",
            metric_value=0.8125,
        ),
        EvalResult(
            task_type="text-classification",
            dataset_type="glue",
            dataset_name="GLUE SST-2",
            dataset_config="sst2",
            dataset_split="validation",
            metric_type="accuracy",
            metric_value=0.9,
        ),
    ]


def _same_eval_results(got, expected) -> bool:
    return [vars(r) for r in got] == [vars(r) for r in expected]


def _env(hub: LocalHub, hf_home: Path, *, offline: bool = False) -> dict:
    """Environment of a child process: the local hub through HF_ENDPOINT, a fresh HF_HOME, one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(
        HF_ENDPOINT=hub.url,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN=hub.token,
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def _run(cmd: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _load_without_lighttoken(hub, tmp_path, name, loads, tokenizers, batch, *, hf_home, offline=False):
    """Run ``loads`` (see ``LOADER``) in a fresh Python without lighttoken_hf; returns (outputs, facts)."""
    folder = tmp_path / name
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in batch.items()}, folder / "inputs.safetensors")
    spec = {
        "site_packages": site.getsitepackages(),
        "loads": [[str(x) if isinstance(x, Path) else x for x in load] for load in loads],
        "tokenizers": tokenizers,
        "text": TEXT,
        "inputs": str(folder / "inputs.safetensors"),
        "outputs": str(folder / "outputs.safetensors"),
        "facts": str(folder / "facts.json"),
    }
    (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    (folder / "load.py").write_text(LOADER, encoding="utf-8")
    # the repo root (which holds the lighttoken_hf package) must not be on the child's path; a venv
    # inside the repo is fine: `-S` skips its .pth files, and the loader proves the import fails
    assert str(REPO_ROOT) not in spec["site_packages"]
    cmd = [sys.executable, "-I", "-S", str(folder / "load.py"), str(folder / "spec.json")]
    _run(cmd, _env(hub, hf_home, offline=offline), cwd=folder)
    facts = json.loads((folder / "facts.json").read_text(encoding="utf-8"))
    return load_file(folder / "outputs.safetensors"), facts


def _readme(hub, repo_id) -> str:
    return hub.files(repo_id)["README.md"].decode("utf-8")


# ------------------------------------------------------------------------------------------ round trip
def test_pushed_checkpoints_load_by_repo_id_without_lighttoken(
    hub_env, compressed, tiny_tokenizer, id_batch, tmp_path
):
    hub = hub_env
    api_repo, cli_repo, hf_repo = (f"{hub.user}/tiny-{how}" for how in ("api", "cli", "transformers"))

    # 1. lighttoken_hf.hub.push_to_hub, from the model object, with a base model and eval results for the card
    push_to_hub(
        compressed,
        api_repo,
        token=hub.token,
        tokenizer=tiny_tokenizer,
        base_model=BASE_ID,
        eval_results=_eval_results(),
    )
    # 2. `lighttoken push` from a saved folder, in a process that finds the hub through HF_ENDPOINT
    ckpt = save_compressed(compressed, tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    saved_readme = (ckpt / "README.md").read_text(encoding="utf-8")
    cli = [
        sys.executable,
        "-m",
        "lighttoken_hf.cli",
        "push",
        str(ckpt),
        cli_repo,
        "--private",
        "--token",
        hub.token,
    ]
    pushed = _run(cli, _env(hub, tmp_path / "hf-home-push"), cwd=tmp_path)
    assert f"{hub.url}/{cli_repo}" in pushed.stdout
    # 3. transformers' own push_to_hub on the LightToken model
    compressed.push_to_hub(hf_repo, token=hub.token)

    code_and_weights = {"config.json", "model.safetensors", *REMOTE_CODE_FILES}
    complete = code_and_weights | {"README.md", REPORT_FILENAME, "tokenizer.json", "tokenizer_config.json"}
    for repo_id in (api_repo, cli_repo, hf_repo):
        tree = hub.tree(repo_id)
        assert (complete if repo_id != hf_repo else code_and_weights | {"README.md"}) <= set(tree), repo_id
        assert tree["model.safetensors"].lfs_oid is not None, "weights must go through Git LFS"
        assert tree["config.json"].lfs_oid is None
        config = json.loads(hub.files(repo_id)["config.json"])
        assert config["auto_map"]["AutoModel"] == "modeling_lighttoken.LightTokenModel"

    # the cards: ours name the repo in their snippets; transformers writes its generic card
    for repo_id in (api_repo, cli_repo):
        readme = _readme(hub, repo_id)
        assert f'AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)' in readme
        assert f"{compressed.compression_report.ratio:.2f}x" in readme
    assert "path/to/this-checkpoint" in saved_readme
    assert (ckpt / "README.md").read_text(encoding="utf-8") == saved_readme, "push must not modify the folder"
    assert "LightToken" not in _readme(hub, hf_repo)
    assert "automatically generated" in _readme(hub, hf_repo)
    assert REPORT_FILENAME not in hub.tree(hf_repo)

    # eval results round trip through the Hub: the downloaded README and the API's cardData
    card = ModelCard.load(api_repo, token=hub.token)
    assert card.data.base_model == BASE_ID
    assert {"lighttoken", "embedding-compression"} <= set(card.data.tags)
    assert _same_eval_results(card.data.eval_results, _eval_results())
    info = HfApi(endpoint=hub.url).model_info(api_repo, token=hub.token)
    assert _same_eval_results(info.card_data.eval_results, _eval_results())
    assert info.card_data.library_name == "transformers"

    # --private: invisible without the token
    api = HfApi(endpoint=hub.url)
    assert api.model_info(cli_repo, token=hub.token).private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(cli_repo, token=False)

    # download by repo id where lighttoken_hf cannot be imported, then again offline from the cache
    with torch.no_grad():
        expected = compressed(**id_batch).last_hidden_state
    expected_ids = tiny_tokenizer(TEXT)["input_ids"]
    repos, tokenizers = [api_repo, cli_repo, hf_repo], [api_repo, cli_repo]
    loads = [[repo_id, "AutoModel", repo_id, ["last_hidden_state"]] for repo_id in repos]
    hf_home = tmp_path / "hf-home-download"
    before = len(hub.requests)
    online = _load_without_lighttoken(hub, tmp_path, "online", loads, tokenizers, id_batch, hf_home=hf_home)
    assert len(hub.requests) > before
    before = len(hub.requests)
    offline = _load_without_lighttoken(
        hub, tmp_path, "offline", loads, tokenizers, id_batch, hf_home=hf_home, offline=True
    )
    assert len(hub.requests) == before, "the offline reload must not contact the hub"

    for outputs, facts in (online, offline):
        assert facts["lighttoken_hf_modules"] == []
        for repo_id in repos:
            assert facts[repo_id]["class"].startswith("transformers_modules."), facts[repo_id]
            assert facts[repo_id]["class"].endswith(".modeling_lighttoken.LightTokenModel")
            assert facts[repo_id]["embedding"] == "LightTokenEmbedding"
            diff = (outputs[f"{repo_id}.last_hidden_state"] - expected).abs().max().item()
            assert diff <= 1e-6, f"{repo_id}: max abs diff {diff}"
        for repo_id in tokenizers:
            assert facts[repo_id]["ids"] == expected_ids


HEAD_CASES = {  # name: (model class, transformers Auto class, output fields)
    "seq-cls": ("BertForSequenceClassification", "AutoModelForSequenceClassification", ["logits"]),
    "qa": ("BertForQuestionAnswering", "AutoModelForQuestionAnswering", ["start_logits", "end_logits"]),
}


def test_task_heads_load_without_lighttoken_from_a_folder_and_by_repo_id_offline(
    hub_env, compressed, tiny_bert_config, tiny_tokenizer, id_batch, tmp_path
):
    """Sequence classification and QA checkpoints: a folder, and a repo id from the HF cache, offline.

    One fresh Python (without lighttoken_hf, HF_HUB_OFFLINE=1) loads all four; the cache it reads was
    filled here by ``snapshot_download`` from the local hub, which is what a download leaves behind.
    It also loads a *base* checkpoint into a sequence-classification head (a fresh head, so only the
    class is compared): ``auto_map`` lists every task class, not just the saved one.
    """
    import transformers
    from huggingface_hub import snapshot_download

    hub = hub_env
    hf_home = tmp_path / "hf-home"
    loads, expected = [], {}
    for name, (model_cls, auto_class, fields) in HEAD_CASES.items():
        config = copy.deepcopy(tiny_bert_config)
        if name == "seq-cls":
            config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
            config.label2id = {v: k for k, v in config.id2label.items()}
        torch.manual_seed(0)
        dense = getattr(transformers, model_cls)(config)
        model = lighttoken_hf.compress(dense, ratio=4, schedule=FAST_SCHEDULE, progress=False).eval()
        with torch.no_grad():
            out = model(**id_batch)
        expected.update({f"{how}-{name}.{field}": out[field] for field in fields for how in ("dir", "repo")})
        folder = save_compressed(model, tmp_path / f"ckpt-{name}", tokenizer=tiny_tokenizer)
        repo_id = f"{hub.user}/tiny-{name}"
        push_to_hub(folder, repo_id, token=hub.token)
        snapshot_download(repo_id, cache_dir=hf_home / "hub", token=hub.token)
        loads += [[f"dir-{name}", auto_class, folder, fields], [f"repo-{name}", auto_class, repo_id, fields]]

    base = save_compressed(compressed, tmp_path / "ckpt-base", tokenizer=tiny_tokenizer)
    auto_map = json.loads((base / "config.json").read_text(encoding="utf-8"))["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"] == (
        "modeling_lighttoken.LightTokenForSequenceClassification"
    )
    loads.append(["base-as-seq-cls", "AutoModelForSequenceClassification", base, []])

    before = len(hub.requests)
    outputs, facts = _load_without_lighttoken(
        hub, tmp_path, "heads", loads, [], id_batch, hf_home=hf_home, offline=True
    )
    assert facts["base-as-seq-cls"]["class"].endswith(
        ".modeling_lighttoken.LightTokenForSequenceClassification"
    )
    assert facts["base-as-seq-cls"]["embedding"] == "LightTokenEmbedding"
    assert len(hub.requests) == before, "the offline load must not contact the hub"
    assert facts["lighttoken_hf_modules"] == []
    for name, (model_cls, _, _) in HEAD_CASES.items():
        light_cls = model_cls.replace("Bert", "LightToken")
        for how in ("dir", "repo"):
            fact = facts[f"{how}-{name}"]
            assert fact["class"].startswith("transformers_modules."), fact
            assert fact["class"].endswith(f".modeling_lighttoken.{light_cls}"), fact
            assert fact["embedding"] == "LightTokenEmbedding"
    assert outputs.keys() == expected.keys()
    for key, want in expected.items():
        assert outputs[key].shape == want.shape, key
        diff = (outputs[key] - want).abs().max().item()
        assert diff <= 1e-6, f"{key}: max abs diff {diff}"


def test_repush_is_a_no_op_and_a_hand_edited_card_is_kept(hub_env, compressed, tmp_path, capsys):
    hub = hub_env
    repo_id = f"{hub.user}/tiny-repush"
    ckpt = save_compressed(compressed, tmp_path / "ckpt")
    assert main(["push", str(ckpt), repo_id, "--token", hub.token]) == 0
    assert f"{hub.url}/{repo_id}" in capsys.readouterr().out
    commits = len(hub.commits(repo_id))

    push_to_hub(ckpt, repo_id, token=hub.token)  # nothing changed: huggingface_hub skips the commit
    assert len(hub.commits(repo_id)) == commits

    edited = (
        (ckpt / "README.md")
        .read_text(encoding="utf-8")
        .replace("## Usage", "## Our notes\n\nHand-written.\n\n## Usage")
    )
    (ckpt / "README.md").write_text(edited, encoding="utf-8")
    push_to_hub(ckpt, repo_id, token=hub.token)
    assert _readme(hub, repo_id) == edited
    assert len(hub.commits(repo_id)) == commits + 1

    push_to_hub(ckpt, repo_id, token=hub.token, base_model=BASE_ID)  # explicit card options: a new card
    readme = _readme(hub, repo_id)
    assert "Hand-written" not in readme
    assert ModelCard(readme).data.base_model == BASE_ID


def test_push_refuses_what_cannot_be_loaded_from_the_hub(hub_env, compressed, tiny_bert, tmp_path, capsys):
    hub = hub_env
    ckpt = save_compressed(compressed, tmp_path / "ckpt")
    (ckpt / "lighttoken_codec.py").unlink()
    plain = tmp_path / "plain-bert"
    tiny_bert.save_pretrained(plain)
    before = len(hub.requests)

    with pytest.raises(ValueError, match="remote-code"):
        push_to_hub(ckpt, f"{hub.user}/broken", token=hub.token)
    with pytest.raises(ValueError, match="not a LightToken checkpoint"):
        push_to_hub(plain, f"{hub.user}/broken", token=hub.token)
    with pytest.raises(TypeError, match="LightToken"):
        push_to_hub(tiny_bert, f"{hub.user}/broken", token=hub.token)
    assert main(["push", str(ckpt), f"{hub.user}/broken"]) == 2
    assert "lighttoken_codec.py" in capsys.readouterr().err
    assert main(["push", str(tmp_path / "missing"), f"{hub.user}/broken"]) == 2
    assert len(hub.requests) == before, "nothing may be sent for a checkpoint that cannot be published"


def test_push_publishes_only_the_checkpoints_own_files(hub_env, compressed, tiny_tokenizer, tmp_path, capsys):
    hub = hub_env
    ckpt = save_compressed(compressed, tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    saved = sorted(p.name for p in ckpt.iterdir())
    (ckpt / ".env").write_text("HF_TOKEN=hf_secret_do_not_publish\n")
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle")
    (ckpt / "notes.txt").write_text("private notes")
    (ckpt / "scratch").mkdir()
    (ckpt / "scratch" / "data.json").write_text("{}")
    (ckpt / "scratch" / "weights.pt").write_bytes(b"\x80\x04 another pickle")
    repo_id = f"{hub.user}/allow-list"

    assert main(["push", str(ckpt), repo_id, "--token", hub.token]) == 0

    published = sorted(hub.files(repo_id))
    assert [name for name in published if name != ".gitattributes"] == saved
    assert not any(b"hf_secret" in data for data in hub.files(repo_id).values())
    err = capsys.readouterr().err
    for name in (".env", "pytorch_model.bin", "notes.txt", "scratch/data.json", "scratch/weights.pt"):
        assert name in err, err
    assert "pickle" in err
    assert (ckpt / ".env").is_file()  # the folder itself is never modified


def test_push_without_a_token_is_refused_by_the_hub(hub_env, compressed, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # no saved token
    ckpt = save_compressed(compressed, tmp_path / "ckpt")
    assert main(["push", str(ckpt), f"{hub_env.user}/no-token"]) == 1
    assert "401" in capsys.readouterr().err
    assert f"{hub_env.user}/no-token" not in hub_env.repos


# ------------------------------------------------------------------------------------------ the card
def test_card_metadata_and_contents(compressed, tmp_path):
    report = compressed.compression_report
    report.end_to_end.update(sentence_embedding_cosine=0.98765, sentences=120)
    card = model_card(
        compressed, base_model=BASE_ID, eval_results=_eval_results(), repo_id="org/tiny-lighttoken"
    )
    card.save(tmp_path / "README.md")

    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.base_model == BASE_ID
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "feature-extraction"
    assert data.tags == ["lighttoken", "embedding-compression"]
    assert data.model_name == "tiny-lighttoken"
    assert _same_eval_results(data.eval_results, _eval_results())

    text = loaded.text
    assert "# tiny-lighttoken" in text
    assert f"**{report.ratio:.2f}x**" in text
    assert f"{report.compressed_nbytes:,} bytes" in text
    assert f"{report.dense_nbytes:,} bytes" in text
    for value in report.fidelity.values():
        assert f"{value:.4f}" in text
    assert "| sentence-embedding cosine | 0.9877 |" in text
    assert "of 120 English sentences" in text
    assert "| STS Benchmark | test | spearman | 0.8125 |" in text
    assert f"| SVD rank | {report.plan['svd_rank']}" in text
    assert f"| loss | {report.settings['loss']} |" in text
    assert "| frequency-aware allocation |" in text
    # no tokenizer reached compress(), so the metric could not be measured: the card says so
    assert "| sensitivity metric | off (requested, but the metric could not be measured) |" in text
    assert f"{report.settings['joint_iterations']} rounds of joint refinement of all stages" in text
    assert 'AutoModel.from_pretrained("org/tiny-lighttoken", trust_remote_code=True)' in text
    assert "Trainer(" in text and "requires_grad_(False)" in text
    assert "remove_unused_columns" not in text  # forward has the backbone's signature: Trainer keeps columns
    assert "resize_token_embeddings" in text
    assert "LightToken: A Task and Model-agnostic Lightweight Token Embedding Framework" in text
    assert "SIGKDD" in text and "2023" in text


def test_card_without_report_extras_says_what_is_missing(compressed, tmp_path):
    text = model_card(compressed).text
    assert "No end-to-end measurement was recorded" in text
    assert "## Evaluation results" not in text
    assert ModelCard(str(model_card(compressed))).data.get("model-index") is None


def test_base_model_is_a_hub_id_never_a_local_path(tiny_bert, tmp_path):
    from transformers import AutoModel

    local = tmp_path / "local-bert"
    tiny_bert.save_pretrained(local)
    base = AutoModel.from_pretrained(local)
    model = lighttoken_hf.compress(
        base, ratio=4, schedule=FAST_SCHEDULE, progress=False, frequency_aware=False
    )
    card = model_card(model)
    assert card.data.base_model is None
    assert str(local) not in str(card.data)
    assert "huggingface.co/" not in card.text

    model.config.backbone._name_or_path = BASE_ID
    card = model_card(model)
    assert card.data.base_model == BASE_ID
    assert f"(https://huggingface.co/{BASE_ID})" in card.text

    with pytest.raises(ValueError, match="Hub model id"):
        model_card(model, base_model=str(local))
    assert hub_model_id("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_model_id("bert-base-uncased") == "bert-base-uncased"
    for path in (str(local), "./model", "~/models/bert", "a/b/c", "C:\\models\\bert", "", None):
        assert hub_model_id(path) is None, path


def test_save_compressed_writes_the_card_it_would_build_from_the_folder(compressed, tiny_tokenizer, tmp_path):
    out = save_compressed(compressed, tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    text = (out / "README.md").read_text(encoding="utf-8")
    assert text == str(model_card(out))
    assert ModelCard.load(out / "README.md").data.tags == ["lighttoken", "embedding-compression"]
    assert 'BertTokenizer.from_pretrained("path/to/this-checkpoint")' in text  # the tokenizer is in the folder

    bare = save_compressed(compressed, tmp_path / "bare")  # no tokenizer: same card as from the model
    assert (bare / "README.md").read_text(encoding="utf-8") == str(model_card(compressed))

    options = save_compressed(
        compressed, tmp_path / "opts", card={"base_model": BASE_ID, "eval_results": _eval_results()}
    )
    data = ModelCard.load(options / "README.md").data
    assert data.base_model == BASE_ID
    assert _same_eval_results(data.eval_results, _eval_results())

    assert not (save_compressed(compressed, tmp_path / "none", card=False) / "README.md").exists()


def test_card_tokenizer_snippet_loads_without_remote_code_or_warnings(compressed, tiny_tokenizer, tmp_path):
    import re

    out = save_compressed(compressed, tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    text = (out / "README.md").read_text(encoding="utf-8")
    found = re.search(r'^tokenizer = (\w+)\.from_pretrained\("path/to/this-checkpoint"\)', text, flags=re.M)
    assert found, "the card shows how to load the tokenizer"
    cls = found.group(1)
    code = f"from transformers import {cls}\nprint({cls}.from_pretrained({str(out)!r})('the man')['input_ids'])"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
        cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip()) == tiny_tokenizer("the man")["input_ids"]
    assert "custom code" not in result.stderr and "model of type" not in result.stderr, result.stderr


def test_info_prints_the_facts_the_card_shows(compressed, tmp_path, capsys):
    compressed.compression_report.end_to_end.update(sentence_embedding_cosine=0.95, sentences=12)
    out = save_compressed(compressed, tmp_path / "ckpt")
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{compressed.compression_report.ratio:.2f}x" in printed

    readme = (out / "README.md").read_text(encoding="utf-8")
    sections = card_facts(out)["sections"]
    assert set(sections) == {"model", "size", "method", "fidelity", "end_to_end"}
    for section, rows in sections.items():
        assert rows, section
        for label, value in rows:
            assert f"| {label} | {value} |" in readme, (label, value)
            assert f"{label:<27}{value}" in printed, (label, value)


@pytest.mark.parametrize(
    ("settings", "info", "expected"),
    [
        (
            {"sensitivity_weighted": True},
            {"calibration": "wordfreq pseudo-sentences", "shrinkage": 0.25},
            "on: the error is measured in the model's own sensitivity metric (measured on wordfreq "
            "pseudo-sentences, shrinkage 0.25)",
        ),
        ({"sensitivity_weighted": False}, {}, "off: plain Euclidean error"),
        ({"loss": "mse"}, {}, "off (compressed before the metric existed)"),
        ({}, None, "unknown (no compression report found)"),
    ],
)
def test_card_states_the_sensitivity_metric(settings, info, expected):
    from lighttoken_hf.cards import _sensitivity_text

    assert _sensitivity_text(settings, info) == expected


def test_the_card_template_exists_once_and_ships_in_the_package():
    templates = sorted(p.relative_to(REPO_ROOT) for p in REPO_ROOT.rglob(TEMPLATE_NAME) if ".venv" not in p.parts)
    assert templates == [Path("lighttoken_hf") / "templates" / TEMPLATE_NAME]
    assert "templates/*.jinja" in (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")


def test_loading_without_trust_remote_code_keeps_transformers_error(compressed, tiny_tokenizer, tmp_path):
    """Where lighttoken_hf is not installed, a plain ``from_pretrained`` fails with transformers' own message."""
    folder = save_compressed(compressed, tmp_path / "ckpt", tokenizer=tiny_tokenizer)
    script = (
        "import json, sys\n"
        "sys.path.extend(json.loads(sys.argv[1]))\n"
        "from transformers import AutoModel\n"
        "AutoModel.from_pretrained(sys.argv[2])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-I", "-S", "-c", script, json.dumps(site.getsitepackages()), str(folder)]
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert result.returncode != 0
    assert "trust_remote_code=True" in result.stderr, result.stderr[-2000:]
    assert "lighttoken_hf" not in result.stderr
