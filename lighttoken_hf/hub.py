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

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["REMOTE_CODE_FILES", "push_to_hub"]

#: The files a checkpoint needs for ``trust_remote_code=True`` loading.
REMOTE_CODE_FILES = ("configuration_lighttoken.py", "modeling_lighttoken.py", "lighttoken_codec.py")
DEFAULT_COMMIT_MESSAGE = "Upload LightToken-compressed model"


def _check_checkpoint(folder: Path) -> dict:
    """Facts of the checkpoint in ``folder``; raises if it cannot be loaded from the Hub as it is."""
    from .saving import checkpoint_info

    info = checkpoint_info(folder)
    missing = [name for name in REMOTE_CODE_FILES if name not in info["files"]]
    if missing:
        raise ValueError(
            f"{folder} lacks the remote-code files {missing}, so it could not be loaded with "
            "trust_remote_code=True; save it again with lighttoken_hf.saving.save_compressed (or "
            "model.save_pretrained after `import lighttoken_hf`)"
        )
    if not any(name.endswith(".safetensors") for name in info["files"]):
        raise ValueError(
            f"{folder} holds no .safetensors weights; save it with lighttoken_hf.saving.save_compressed"
        )
    return info


def _mirror(folder: Path, staging: Path, skip: str) -> None:
    """Make ``staging`` look like ``folder`` (symlinks, or copies where symlinks fail) without ``skip``."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if rel.as_posix() == skip or not path.is_file():
            continue
        target = staging / rel
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

    For a folder, its README.md is uploaded as is if it was edited by hand; the card lighttoken wrote (or
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

    from .cards import _is_lighttoken_model
    from .saving import save_compressed

    folder: Path | None = None
    if isinstance(model_or_dir, (str, os.PathLike)):
        folder = Path(model_or_dir).expanduser()
        _check_checkpoint(folder)
        if tokenizer is not None:
            raise TypeError(
                "tokenizer= is for model objects; a checkpoint folder is uploaded with its own tokenizer"
            )
    elif not _is_lighttoken_model(model_or_dir):
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
            card = _card_for_repo(folder, repo_id, base_model, eval_results)
            upload = folder
            if card is not None:
                upload = Path(tmp) / "checkpoint"
                _mirror(folder, upload, skip="README.md")
                card.save(upload / "README.md")
        return api.upload_folder(repo_id=repo_id, folder_path=upload, commit_message=commit_message)
