"""Publish a LightToken checkpoint on the Hugging Face Hub.

:func:`push_to_hub` uploads a complete checkpoint in one commit: weights (safetensors), ``config.json``,
the three remote-code files (``configuration_lighttoken.py``, ``modeling_lighttoken.py``,
``lighttoken_codec.py``), the tokenizer, ``lighttoken_report.json`` and the model card (``README.md``).
Anyone can then load it with ``AutoModel.from_pretrained(repo_id, trust_remote_code=True)``, without
installing lighttoken-hf. The endpoint is huggingface_hub's (``HF_ENDPOINT``, default
https://huggingface.co) unless ``endpoint=`` is given.

transformers' own ``model.push_to_hub(repo_id)`` also works on a LightToken model: ``save_pretrained``
copies the three remote-code files and writes ``auto_map`` (``import lighttoken_hf`` registers the
classes for the Auto API), so code, weights and config are published. It does *not* write the LightToken
card: transformers uploads its generic card ("This model card has been automatically generated")
when the repo has no ``README.md`` yet and re-uploads the existing one otherwise; it uploads neither the
tokenizer nor ``lighttoken_report.json``. Use :func:`push_to_hub` (or ``lighttoken push``) for the full
checkpoint and card.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .checkpoint import REMOTE_CODE_FILES, check_publishable
from .sentence_transformers_support import (
    MODEL_CONFIG_FILENAME,
    MODULES_FILENAME,
    TRANSFORMER_CONFIG_FILENAMES,
)

__all__ = ["CHECKPOINT_FILES", "PICKLE_SUFFIXES", "publishable_files", "push_to_hub"]

logger = logging.getLogger(__name__)

#: The files a checkpoint needs for ``trust_remote_code=True`` loading.
#: Top-level files of a checkpoint that are published (besides ``*.safetensors``): config, remote code,
#: tokenizer, generation settings, report, card and sentence-transformers settings.
CHECKPOINT_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "README.md",
        "lighttoken_report.json",
        "model.safetensors.index.json",
        *REMOTE_CODE_FILES,
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "tokenizer.model",
        "spiece.model",
        "sentencepiece.bpe.model",
        "chat_template.jinja",
        "chat_template.json",
        MODULES_FILENAME,
        MODEL_CONFIG_FILENAME,
        *TRANSFORMER_CONFIG_FILENAMES,
    }
)
#: Suffixes of pickle-based files, never published.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
DEFAULT_COMMIT_MESSAGE = "Upload LightToken-compressed model"


def _st_module_folders(folder: Path) -> set[str]:
    """The sub-folders that ``modules.json`` names (sentence-transformers' Pooling, Normalize, Dense...)."""
    try:
        modules = json.loads((folder / MODULES_FILENAME).read_text(encoding="utf-8"))
        paths = {str(m.get("path") or "").strip("/") for m in modules if isinstance(m, dict)}
    except (OSError, ValueError, TypeError, AttributeError):
        return set()
    return {p for p in paths if p and "/" not in p and not p.startswith(".")}


def _is_checkpoint_file(parts: list[str], modules: set[str]) -> bool:
    name = parts[-1]
    if len(parts) == 1:
        return name in CHECKPOINT_FILES or name.endswith(".safetensors")
    return len(parts) == 2 and parts[0] in modules and name.endswith((".json", ".safetensors", ".txt"))


def publishable_files(folder: str | os.PathLike[str]) -> tuple[list[str], dict[str, str]]:
    """Split the files below a checkpoint ``folder`` into those to publish and those to leave out.

    Published (an allow-list): :data:`CHECKPOINT_FILES`, ``*.safetensors``, the remote-code files and, in
    the sentence-transformers module folders that ``modules.json`` names, their JSON, safetensors and text
    files. Everything else stays local: hidden files (``.env``), notes, logs, other code, and every pickle
    (``*.bin``, ``*.pt``, ``*.pkl``...), which could run code on whoever loads it.

    Returns:
        (relative POSIX paths to upload, {relative path: why it is left out}).
    """
    root = Path(folder)
    modules = _st_module_folders(root)
    upload: list[str] = []
    skipped: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        name, parts = path.name, rel.split("/")
        if name.endswith(PICKLE_SUFFIXES):
            skipped[rel] = "pickle (only safetensors weights are published)"
        elif any(part.startswith(".") for part in parts):
            skipped[rel] = "hidden file"
        elif _is_checkpoint_file(parts, modules):
            upload.append(rel)
        else:
            skipped[rel] = "not a checkpoint file"
    return upload, skipped


def _stage(folder: Path, staging: Path, files: list[str], skip: str | None = None) -> None:
    """Make ``staging`` hold ``files`` of ``folder`` (symlinks, or copies where symlinks fail)."""
    for rel in files:
        if rel == skip:
            continue
        path, target = folder / rel, staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.symlink(path.absolute(), target)
        except OSError:  # e.g. Windows without symlink rights
            shutil.copy2(path, target)


def _card_for_repo(folder: Path, repo_id: str, base_model: str | None, eval_results: Any) -> Any:
    """The card to publish for the checkpoint in ``folder``, or ``None`` to upload its README.md as is.

    A new card is built when ``base_model`` or ``eval_results`` is given, when the folder has no README.md,
    or when its README.md is the card lighttoken wrote (unchanged): that card gets the repo id in its code
    snippets, keeping its base model and evaluation results. A README.md edited by hand is kept.
    """
    from huggingface_hub import ModelCard

    from .cards import card_facts, default_model_name, model_card

    readme = folder / "README.md"
    if base_model is not None or eval_results is not None or not readme.is_file():
        return model_card(folder, base_model=base_model, eval_results=eval_results, repo_id=repo_id)
    try:
        existing = ModelCard(readme.read_text(encoding="utf-8"))
        data = existing.data
        previous = dict(
            base_model=data.base_model, eval_results=data.eval_results, model_name=data.model_name
        )
        if model_card(folder, **previous).content != existing.content:
            return None  # written or edited by hand
    except Exception:  # noqa: BLE001 - not a card lighttoken can rebuild: keep it
        return None
    if previous["model_name"] == default_model_name(card_facts(folder, base_model=data.base_model)):
        previous["model_name"] = None  # the default title becomes the repo name
    return model_card(folder, repo_id=repo_id, **previous)


def push_to_hub(
    model_or_dir: Any,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    tokenizer: Any = None,
    base_model: str | None = None,
    eval_results: Any = None,
    endpoint: str | None = None,
):
    """Upload a LightToken model or saved checkpoint to a Hub model repo (created if needed), in one commit.

    Args:
        model_or_dir: a LightToken model (from :func:`lighttoken_hf.compress`), saved first to a temporary
            folder with :func:`lighttoken_hf.saving.save_compressed`, or the folder of a saved checkpoint.
        repo_id: ``namespace/name`` of the model repo; created with ``exist_ok=True``.
        token: Hub token (default: the locally saved one, or ``HF_TOKEN``).
        private: create the repo as private (ignored when it already exists; ``None``: Hub default).
        commit_message: message of the upload commit.
        tokenizer: for a model object, the tokenizer to publish with it (a folder already holds its own).
        base_model: Hub id of the uncompressed model for the card (default: recorded in the checkpoint).
        eval_results: ``huggingface_hub.EvalResult`` (or a list) for the card's ``model-index``.
        endpoint: Hub endpoint (default: ``HF_ENDPOINT`` or https://huggingface.co).

    For a folder, only the checkpoint's own files are uploaded (:func:`publishable_files`: never hidden
    files such as ``.env``, pickles or anything else that is not part of the checkpoint; what is left out
    is logged). Its README.md is uploaded as is if it was edited by hand; the card lighttoken wrote (or
    a missing one) is replaced by a card naming ``repo_id`` in its code snippets. Passing ``base_model``
    or ``eval_results`` always writes a new card. The folder itself is never modified.

    Returns:
        The ``huggingface_hub.CommitInfo`` of the upload (``.commit_url``, ``.oid``, ``.repo_url``).

    Raises:
        FileNotFoundError / ValueError: the folder is not a complete LightToken checkpoint.
        TypeError: ``model_or_dir`` is neither a LightToken model nor a folder.
        huggingface_hub.errors.HfHubHTTPError: the Hub refused a request (no token, no write access, ...).
    """
    from huggingface_hub import HfApi

    from .checkpoint import is_lighttoken_model
    from .saving import save_compressed

    folder: Path | None = None
    if isinstance(model_or_dir, (str, os.PathLike)):
        folder = Path(model_or_dir).expanduser()
        check_publishable(folder)
        if tokenizer is not None:
            raise TypeError(
                "tokenizer= is for model objects; a checkpoint folder is uploaded with its own tokenizer"
            )
    elif not is_lighttoken_model(model_or_dir):
        raise TypeError(
            "push_to_hub expects a LightToken-compressed model (from lighttoken_hf.compress) or the folder of "
            f"a saved LightToken checkpoint, got {type(model_or_dir).__name__}"
        )

    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory(prefix="lighttoken-push-") as tmp:
        if folder is None:
            card = {"repo_id": repo_id, "base_model": base_model, "eval_results": eval_results}
            upload = save_compressed(model_or_dir, Path(tmp) / "checkpoint", tokenizer=tokenizer, card=card)
        else:
            files, skipped = publishable_files(folder)
            if skipped:
                logger.warning(
                    "not uploaded from %s: %s",
                    folder,
                    "; ".join(f"{name} ({why})" for name, why in skipped.items()),
                )
            card = _card_for_repo(folder, repo_id, base_model, eval_results)
            upload = Path(tmp) / "checkpoint"
            _stage(folder, upload, files, skip="README.md" if card is not None else None)
            if card is not None:
                card.save(upload / "README.md")
        return api.upload_folder(repo_id=repo_id, folder_path=upload, commit_message=commit_message)
