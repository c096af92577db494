"""Keep a sentence-transformers model a sentence-transformers model when it is compressed.

A sentence-transformers model folder (one with ``modules.json``, such as all-MiniLM-L6-v2) is a
Transformers checkpoint plus the modules that turn token embeddings into a sentence embedding
(``Pooling``, ``Normalize``, ``Dense``, ...). :func:`sentence_transformers_layout` reads such a folder and
:func:`copy_sentence_transformers_files` writes its side files beside a compressed checkpoint, so that

.. code-block:: python

    SentenceTransformer(out_dir, trust_remote_code=True).encode(sentences)

runs the compressed LightToken model, then the source's own pooling / normalization modules.

What is copied: ``modules.json`` (with the Transformer module at path ``""``, where the compressed
weights are), the Transformer module's ``sentence_*_config.json``, ``config_sentence_transformers.json``
and the folder of every other module, unchanged. No ``trust_remote_code`` is written anywhere:
sentence-transformers strips it from module config files, and passes the ``trust_remote_code`` given to
``SentenceTransformer(...)`` on to ``AutoConfig``, ``AutoModel`` and ``AutoProcessor``.

Only torch-free standard-library code: sentence-transformers itself is not needed to save.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

__all__ = [
    "MODULES_FILENAME",
    "SentenceTransformersLayout",
    "copy_sentence_transformers_files",
    "download_sentence_transformers_files",
    "is_sentence_transformers_dir",
    "sentence_transformers_layout",
]

MODULES_FILENAME = "modules.json"
#: Model-level sentence-transformers settings (version, prompts, similarity function), copied as is.
MODEL_CONFIG_FILENAME = "config_sentence_transformers.json"
#: The config file names the Transformer module is read from (sentence-transformers tries them in order).
TRANSFORMER_CONFIG_FILENAMES = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)


@dataclass
class SentenceTransformersLayout:
    """What a sentence-transformers folder holds, as far as a compressed copy of it needs to know.

    Attributes:
        source: the source folder.
        modules: the entries of ``modules.json`` to write, the Transformer module's path set to ``""``.
        transformer_dir: the folder of the source's Transformer module (where its weights, tokenizer and
            ``sentence_bert_config.json`` are).
        module_dirs: relative paths of the other modules' folders that exist in the source.
        module_types: the ``type`` of every module, in order.
    """

    source: Path
    modules: list[dict]
    transformer_dir: Path
    module_dirs: list[str] = field(default_factory=list)
    module_types: list[str] = field(default_factory=list)


def is_sentence_transformers_dir(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is a local folder with a ``modules.json`` (a sentence-transformers model)."""
    return path is not None and (Path(path).expanduser() / MODULES_FILENAME).is_file()


def _is_transformer_type(module_type: str) -> bool:
    # sentence_transformers.models.Transformer, ...base.modules.transformer.Transformer, ...
    return module_type.rsplit(".", 1)[-1] == "Transformer"


def _safe_relative(path: str, where: Path) -> str:
    """``path`` (a module folder from modules.json) if it is a plain relative path inside the model."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts or os.path.isabs(path):
        raise ValueError(f"{where} lists a module at path {path!r}, outside the model folder")
    return "/".join(parts)


def _read_json_object(path: Path) -> dict:
    """The JSON object in ``path`` ({} if there is no such file)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def sentence_transformers_layout(source_dir: str | os.PathLike[str]) -> SentenceTransformersLayout | None:
    """Read the sentence-transformers layout of ``source_dir``; ``None`` if it has no ``modules.json``.

    Raises:
        FileNotFoundError: ``source_dir`` is not a folder.
        ValueError: ``modules.json`` (or another sentence-transformers config) is broken, or the model is
            not one whose transformer LightToken can stand in for: it needs exactly one ``Transformer``
            module, as its first module, for feature extraction (a SentenceTransformer, not a
            CrossEncoder or SparseEncoder).
    """
    source = Path(source_dir).expanduser()
    if not source.is_dir():
        raise FileNotFoundError(f"the source model folder {source} is not a directory")
    modules_file = source / MODULES_FILENAME
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot read {modules_file}: {err}") from None
    if (
        not isinstance(modules, list)
        or not modules
        or not all(isinstance(m, dict) and isinstance(m.get("type"), str) for m in modules)
    ):
        raise ValueError(f"{modules_file} is not a list of sentence-transformers modules with a 'type'")

    types = [m["type"] for m in modules]
    transformers_at = [i for i, t in enumerate(types) if _is_transformer_type(t)]
    if transformers_at != [0]:
        raise ValueError(
            f"{modules_file} has modules {types}: LightToken can keep a sentence-transformers model's "
            "modules only when its first module, and only that one, is a Transformer"
        )

    kind = _read_json_object(source / MODEL_CONFIG_FILENAME).get("model_type", "SentenceTransformer")
    if kind != "SentenceTransformer":
        raise ValueError(
            f"{source / MODEL_CONFIG_FILENAME} says this is a {kind}; LightToken keeps the modules of "
            "SentenceTransformer (embedding) models only"
        )

    entries: list[dict] = []
    module_dirs: list[str] = []
    transformer_dir = source
    for i, module in enumerate(modules):
        entry = dict(module)
        path = str(module.get("path") or "")
        if i == 0:
            if path:
                transformer_dir = source / _safe_relative(path, modules_file)
            entry["path"] = ""  # the compressed weights are saved at the root of the output
        elif not path:
            raise ValueError(
                f"{modules_file}: module {module.get('name', i)!r} ({module['type']}) is stored at the root "
                "of the model folder, where the compressed transformer goes"
            )
        else:
            rel = _safe_relative(path, modules_file)
            entry["path"] = rel
            if (source / rel).is_dir():
                module_dirs.append(rel)  # modules without settings (e.g. Normalize) may have no folder
        entries.append(entry)
    for name in TRANSFORMER_CONFIG_FILENAMES:
        task = _read_json_object(transformer_dir / name).get("transformer_task", "feature-extraction")
        if task != "feature-extraction":
            raise ValueError(
                f"{transformer_dir / name} has transformer_task {task!r}; LightToken keeps the modules of "
                "feature-extraction (embedding) models only"
            )
    return SentenceTransformersLayout(
        source=source, modules=entries, transformer_dir=transformer_dir, module_dirs=module_dirs,
        module_types=types,
    )


def copy_sentence_transformers_files(layout: SentenceTransformersLayout, dest_dir: str | os.PathLike[str]) -> None:
    """Write the sentence-transformers side files of ``layout`` into ``dest_dir`` (a saved checkpoint).

    ``dest_dir`` already holds the compressed model and its tokenizer; nothing there is overwritten except
    by the files written here, which are never weights or tokenizer files.
    """
    dest = Path(dest_dir)
    text = json.dumps(layout.modules, indent=2) + "\n"
    (dest / MODULES_FILENAME).write_text(text, encoding="utf-8")
    for name in TRANSFORMER_CONFIG_FILENAMES:
        config = layout.transformer_dir / name
        if config.is_file():
            shutil.copyfile(config, dest / name)
    if (layout.source / MODEL_CONFIG_FILENAME).is_file():
        shutil.copyfile(layout.source / MODEL_CONFIG_FILENAME, dest / MODEL_CONFIG_FILENAME)
    for rel in layout.module_dirs:
        target = dest / rel
        if target.exists():
            raise ValueError(
                f"the sentence-transformers module folder {rel!r} clashes with a file of the compressed "
                "checkpoint"
            )
        shutil.copytree(layout.source / rel, target, symlinks=False)


def download_sentence_transformers_files(repo_id: str, revision: str | None = None) -> Path | None:
    """Fetch the sentence-transformers files of the Hub model ``repo_id``; ``None`` if it has none.

    Downloads (or finds in the Hugging Face cache) ``modules.json``, the sentence-transformers configs and
    the folders of the modules other than the Transformer (no transformer weights), and returns the local
    snapshot folder, for :func:`sentence_transformers_layout`. A repo without ``modules.json`` (or one that
    cannot be found: loading the model reports that) gives ``None``.
    """
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        modules_file = Path(hf_hub_download(repo_id, MODULES_FILENAME, revision=revision))
    except (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    ):
        return None  # not a sentence-transformers model, or not reachable: loading the model says which
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(f"cannot read {MODULES_FILENAME} of {repo_id}: {err}") from None
    patterns = [MODULES_FILENAME, MODEL_CONFIG_FILENAME, *TRANSFORMER_CONFIG_FILENAMES]
    for i, module in enumerate(modules if isinstance(modules, list) else []):
        path = str(module.get("path") or "") if isinstance(module, dict) else ""
        if not path:
            continue
        path = _safe_relative(path, modules_file)
        if i == 0:  # the transformer's own weights are not needed, only its sentence-transformers config
            patterns += [f"{path}/{name}" for name in TRANSFORMER_CONFIG_FILENAMES]
        else:
            patterns += [f"{path}/*", f"{path}/**"]
    return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
