"""Save a LightToken-compressed model atomically, and read back the facts of a saved checkpoint.

:func:`save_compressed` writes the weights (safetensors), the tokenizer, the compression report
(``lighttoken_report.json``) and the model card (``README.md``, see :mod:`lighttoken_hf.cards`) into a
hidden temporary folder beside the destination, then renames it into place. Given the folder of a
sentence-transformers source model (``source_dir=``), its ``modules.json``, module folders and configs are
staged too (:mod:`lighttoken_hf.sentence_transformers_support`), so the checkpoint loads with
``SentenceTransformer(path, trust_remote_code=True)``. An interrupted or failed
save (exception, Ctrl-C) leaves no half-written output behind: either the complete checkpoint is there,
or the destination is as it was before.

:func:`check_output_dir` runs the same checks on the destination up front, so a command line can
refuse a bad ``--out`` before spending minutes compressing; :func:`checkpoint_info` reads the facts of a
saved checkpoint from its JSON files without loading any weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CARD_FILENAME", "REPORT_FILENAME", "check_output_dir", "checkpoint_info", "save_compressed"]

REPORT_FILENAME = "lighttoken_report.json"
CARD_FILENAME = "README.md"
_MODEL_TYPE = "lighttoken"


def _target(out_dir: str | os.PathLike[str]) -> Path:
    """Absolute destination path; a symlink is followed so its target is what gets (re)written."""
    path = Path(out_dir).expanduser()
    if path.is_symlink():
        path = path.resolve()
    return path.absolute()


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_dir(out_dir: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Check that a compressed model can be saved to ``out_dir``, before doing any work.

    Args:
        out_dir: destination folder; it may not exist yet (missing parents are created on save).
        overwrite: allow replacing an existing, non-empty folder.

    Returns:
        The absolute destination path.

    Raises:
        FileExistsError: ``out_dir`` is a non-empty folder and ``overwrite`` is false, or it is a file.
        PermissionError: the folder that would hold ``out_dir`` is not writable.
    """
    path = _target(out_dir)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(
                f"the output path {path} exists and is not a directory; choose a directory path for the "
                "output"
            )
        if not overwrite and any(path.iterdir()):
            raise FileExistsError(
                f"the output directory {path} already exists and is not empty; choose another directory, "
                "or pass overwrite=True (command line: --overwrite) to replace it"
            )
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise FileExistsError(f"cannot create {path}: {anchor} exists and is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: the directory {anchor} is not writable")
    return path


def _jsonable(obj: Any) -> Any:
    """``obj`` with NaN/Inf floats as ``null`` and unknown objects as strings (strict JSON)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy / torch scalars
        return _jsonable(obj.item())
    return str(obj)


def _report_dict(report: Any) -> dict:
    if isinstance(report, Mapping):
        return dict(report)
    if hasattr(report, "to_dict"):
        return report.to_dict()
    raise TypeError(f"report must be a CompressionReport or a dict, got {type(report).__name__}")


def _umask_mode() -> int:
    """The mode a plain ``mkdir`` would give (``mkdtemp`` makes 0700 folders)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def save_compressed(
    model: Any,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    report: Any = None,
    overwrite: bool = False,
    card: Any = True,
    source_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Save a compressed model (and its tokenizer, report and model card) to ``out_dir``, atomically.

    Everything is written into a temporary sibling folder ``.{name}.tmp-<random>`` (same parent, so the
    final rename is atomic), which is then renamed to ``out_dir``. With ``overwrite=True`` an existing
    folder is renamed away, the new one renamed in, and only then is the old one deleted. On any error
    or ``KeyboardInterrupt`` the temporary folder is removed and ``out_dir`` is left untouched.

    Args:
        model: the model to save, usually the LightToken model returned by :func:`lighttoken_hf.compress`;
            written with ``model.save_pretrained`` (safetensors).
        out_dir: destination folder (missing parents are created).
        tokenizer: saved beside the weights with ``tokenizer.save_pretrained`` if given.
        report: a :class:`~lighttoken_hf.CompressionReport` (or a plain dict) written as
            ``lighttoken_report.json``; defaults to ``model.compression_report`` when the model has one.
        overwrite: replace ``out_dir`` if it exists and is not empty.
        card: the model card written as ``README.md``. ``True`` (default): built by
            :func:`lighttoken_hf.cards.model_card` from the saved checkpoint itself, so it shows exactly
            what was saved; a mapping: the same, with these keyword arguments for ``model_card``
            (``base_model``, ``eval_results``, ``repo_id``, ``model_name``); a ``huggingface_hub.ModelCard``:
            written as is; ``False``: no card.
        source_dir: the local folder of the uncompressed model. When it is a sentence-transformers model
            (it has ``modules.json``), its sentence-transformers files are saved too (``modules.json``,
            ``sentence_bert_config.json``, ``config_sentence_transformers.json`` and the folders of its
            Pooling / Normalize / ... modules, see :mod:`lighttoken_hf.sentence_transformers_support`), so
            ``SentenceTransformer(out_dir, trust_remote_code=True)`` loads the compressed model with the
            source's pooling. Without ``tokenizer``, the source's tokenizer is saved then. Any other folder
            (or ``None``): nothing more is saved.

    Returns:
        The absolute path of the saved checkpoint.

    Raises:
        FileExistsError: ``out_dir`` exists and is not empty and ``overwrite`` is false (or another
            process created it meanwhile), or ``out_dir`` is a file.
        FileNotFoundError: ``source_dir`` is not a folder.
        ValueError: ``source_dir`` is a sentence-transformers model whose modules cannot be kept (broken
            ``modules.json``, or no single Transformer module first).
    """
    target = check_output_dir(out_dir, overwrite=overwrite)
    st_layout = None
    if source_dir is not None:
        from .sentence_transformers_support import sentence_transformers_layout

        st_layout = sentence_transformers_layout(source_dir)
        if st_layout is not None and tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(st_layout.transformer_dir)
    if report is None:
        report = getattr(model, "compression_report", None)
    report_data = _jsonable(_report_dict(report)) if report is not None else None

    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    retired: Path | None = None
    try:
        os.chmod(staging, _umask_mode())
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if st_layout is not None:
            from .sentence_transformers_support import copy_sentence_transformers_files

            copy_sentence_transformers_files(st_layout, staging)
        if report_data is not None:
            text = json.dumps(report_data, indent=2, allow_nan=False) + "\n"
            (staging / REPORT_FILENAME).write_text(text, encoding="utf-8")
        if card is not False and card is not None:
            _write_card(staging, card)
        stray = sorted(p.name for p in staging.glob("*.bin"))
        if stray:
            raise RuntimeError(f"save_pretrained wrote non-safetensors weight files {stray}")

        if target.exists() and any(target.iterdir()):
            if not overwrite:  # appeared while we were writing
                raise FileExistsError(
                    f"the output directory {target} was created by someone else while saving; choose another "
                    "directory, or pass overwrite=True (command line: --overwrite) to replace it"
                )
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, retired / target.name)
            os.rename(staging, target)
        else:
            try:
                os.replace(staging, target)  # replaces an empty folder atomically on POSIX
            except OSError:
                if target.is_dir() and not any(target.iterdir()):
                    target.rmdir()  # platforms where rename cannot replace an empty folder
                    os.rename(staging, target)
                elif target.exists():
                    raise FileExistsError(
                        f"the output directory {target} was created by someone else while saving; choose "
                        "another directory, or pass overwrite=True (command line: --overwrite) to replace it"
                    ) from None
                else:
                    raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if retired is not None:
            old = retired / target.name
            if old.exists() and not target.exists():
                with contextlib.suppress(OSError):
                    os.rename(old, target)  # the swap failed: put the old checkpoint back
            if target.exists():  # never delete the only copy of the old checkpoint
                shutil.rmtree(retired, ignore_errors=True)
        if not target.exists():  # failed: remove the parent folders this call created
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return target


def _write_card(folder: Path, card: Any) -> None:
    """Write the model card of the checkpoint staged in ``folder`` as ``README.md``.

    A generated card is built from the staged files (not from the model object), so it is exactly the
    card :func:`lighttoken_hf.cards.model_card` builds later from the saved folder.
    """
    if card is True or isinstance(card, Mapping):
        from .cards import model_card

        card = model_card(folder, **(dict(card) if isinstance(card, Mapping) else {}))
    if not hasattr(card, "save"):
        raise TypeError(
            f"card must be True, False, a mapping or a huggingface_hub.ModelCard, got {type(card).__name__}"
        )
    card.save(folder / CARD_FILENAME)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def _st_module_types(folder: Path) -> list[str] | None:
    """Short type names of the sentence-transformers modules saved in ``folder`` (``None``: none saved)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        return [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return None


def checkpoint_info(path: str | os.PathLike[str]) -> dict:
    """Facts of a saved LightToken checkpoint, read from its JSON files (no weights are loaded).

    Returns:
        A dict with ``path``, ``base_model`` (``model_type``, ``architectures``, ``name_or_path`` of the
        uncompressed backbone), ``plan`` (``svd_rank``, ``stage_bits``, ``stage_rows``, ``factor_dtype``,
        ``decoder_dtype``, ``num_embeddings``, ``embedding_dim``), ``architectures`` of the compressed model,
        ``report`` (the
        contents of ``lighttoken_report.json``, else the ``compression_stats`` recorded in
        ``config.json``), ``report_source``, ``sentence_transformers_modules`` (the module types of
        ``modules.json``, e.g. ``["Transformer", "Pooling", "Normalize"]``, or ``None`` when the checkpoint is
        not a sentence-transformers model) and ``files`` (name -> size in bytes).

    Raises:
        FileNotFoundError: ``path`` is not a folder or has no ``config.json``.
        ValueError: the folder is not a LightToken checkpoint (another ``model_type``) or its JSON is broken.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved model checkpoint")
    config = _read_json(config_file)
    if config.get("model_type") != _MODEL_TYPE:
        raise ValueError(
            f"{folder} is not a LightToken checkpoint (config.json has model_type "
            f"{config.get('model_type')!r}, expected {_MODEL_TYPE!r}); compress a model first with "
            "`lighttoken compress`"
        )
    backbone = config.get("backbone") or {}
    report_file = folder / REPORT_FILENAME
    if report_file.is_file():
        report, source = _read_json(report_file), REPORT_FILENAME
    else:
        report, source = dict(config.get("compression_stats") or {}), "config.json compression_stats"
    return {
        "path": str(folder.absolute()),
        "architectures": config.get("architectures") or [],
        "base_model": {
            "model_type": backbone.get("model_type"),
            "architectures": backbone.get("architectures") or [],
            "name_or_path": backbone.get("_name_or_path") or None,
        },
        "plan": {
            "num_embeddings": config.get("num_embeddings"),
            "embedding_dim": config.get("embedding_dim"),
            "svd_rank": config.get("svd_rank"),
            "stage_bits": config.get("stage_bits") or [],
            "stage_rows": config.get("stage_rows") or [],
            "factor_dtype": config.get("factor_dtype"),
            "decoder_dtype": config.get("decoder_dtype"),
        },
        "report": report,
        "report_source": source,
        "sentence_transformers_modules": _st_module_types(folder),
        "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()},
    }
