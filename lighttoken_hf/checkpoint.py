"""Reading a LightToken checkpoint's facts: from a saved folder (:func:`checkpoint_info`, JSON files only, no
weights loaded) or from a model in memory (:func:`model_info`), in the same shape; whether its weights are
whole (:func:`check_weights_complete`) and whether it can be published (:func:`check_publishable`).

Shared by the command line (``lighttoken info``), the model cards and the Hub upload.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .jsonio import to_json

__all__ = [
    "MODEL_TYPE",
    "REMOTE_CODE_FILES",
    "REPORT_FILENAME",
    "IncompleteCheckpointError",
    "check_publishable",
    "check_weights_complete",
    "checkpoint_facts",
    "checkpoint_info",
    "is_lighttoken_checkpoint",
    "is_lighttoken_model",
    "model_info",
    "report_dict",
    "sentence_transformers_module_types",
]

#: The compression report saved beside the weights.
REPORT_FILENAME = "lighttoken_report.json"
#: ``model_type`` of a LightToken ``config.json``.
MODEL_TYPE = "lighttoken"
#: The core modules every checkpoint ships as remote code (``trust_remote_code=True`` loads them).
REMOTE_CODE_FILES = ("configuration_lighttoken.py", "modeling_lighttoken.py", "lighttoken_codec.py")


def is_lighttoken_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` has a ``config.json`` of model type ``lighttoken`` (complete or not)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and config.get("model_type") == MODEL_TYPE


def is_lighttoken_model(obj: Any) -> bool:
    from .core.modeling_lighttoken import LightTokenPreTrainedModel

    return isinstance(obj, LightTokenPreTrainedModel)


def model_info(model: Any, report: Any = None) -> dict:
    """The facts of an in-memory LightToken model, shaped like :func:`checkpoint_info`."""
    config = model.config
    backbone = config.backbone
    backbone = backbone.to_dict() if hasattr(backbone, "to_dict") else dict(backbone or {})
    if report is None:
        report = getattr(model, "compression_report", None)
    if report is not None:
        report, source = to_json(report_dict(report)), "compression report"
    else:
        report, source = to_json(dict(config.compression_stats or {})), "config compression_stats"
    return {
        "path": None,
        "architectures": [type(model).__name__],
        "base_model": {
            "model_type": backbone.get("model_type"),
            "architectures": backbone.get("architectures") or [],
            "name_or_path": backbone.get("_name_or_path") or None,
        },
        "plan": {
            "num_embeddings": config.num_embeddings,
            "embedding_dim": config.embedding_dim,
            "svd_rank": config.svd_rank,
            "stage_bits": list(config.stage_bits or []),
            "stage_rows": list(config.stage_rows or []),
            "factor_dtype": config.factor_dtype,
            "decoder_dtype": config.decoder_dtype,
        },
        "report": report,
        "report_source": source,
        "files": {},
    }


def report_dict(report: Any) -> dict:
    """A compression report (a :class:`~.compressor.report.CompressionReport` or its dict) as a dict."""
    if isinstance(report, Mapping):
        return dict(report)
    if hasattr(report, "to_dict"):
        return report.to_dict()
    raise TypeError(f"report must be a CompressionReport or a dict, got {type(report).__name__}")


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def sentence_transformers_module_types(folder: Path) -> list[str] | None:
    """Short type names of the sentence-transformers modules saved in ``folder`` (``None``: none saved)."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        return [str(m["type"]).rsplit(".", 1)[-1] for m in modules]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError):
        return None


class IncompleteCheckpointError(ValueError):
    """A LightToken checkpoint folder whose weights are missing or cut short (an interrupted save or copy)."""


def _safetensors_problem(path: Path) -> str | None:
    """Why the safetensors file ``path`` is unreadable or cut short, or ``None`` if its size adds up."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > size - 8:
                return f"{path.name} is cut short ({size:,} bytes, its header alone needs {header_len + 8:,})"
            header = json.loads(f.read(header_len))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
        return f"{path.name} is not a readable safetensors file ({err})"
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    expected = 8 + header_len + max(ends, default=0)
    if size != expected:
        return f"{path.name} has {size:,} bytes where its header describes {expected:,}"
    return None


def check_weights_complete(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`IncompleteCheckpointError` unless ``folder``'s safetensors weights are all there, whole.

    Reads only the file headers and sizes: ``model.safetensors``, or every shard that
    ``model.safetensors.index.json`` names.
    """
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(_read_json(index)["weight_map"].values()))
        except (KeyError, AttributeError, ValueError) as err:
            raise IncompleteCheckpointError(f"{index} is broken ({err})") from None
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise IncompleteCheckpointError(
            f"{folder} is an incomplete LightToken checkpoint: config.json is there but model.safetensors is "
            "missing (an interrupted save or copy?); save or download it again"
        )
    for shard in shards:
        problem = (
            f"{shard} is missing" if not (folder / shard).is_file() else _safetensors_problem(folder / shard)
        )
        if problem:
            raise IncompleteCheckpointError(
                f"{folder} is an incomplete LightToken checkpoint: {problem} (an interrupted save or copy?); "
                "save or download it again"
            )


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
        IncompleteCheckpointError: the weights are missing or cut short (a ``ValueError``).
        ValueError: the folder is not a LightToken checkpoint (another ``model_type``) or its JSON is broken.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    config_file = folder / "config.json"
    if not config_file.is_file():
        if any(folder.glob("*.safetensors")) or (folder / "modeling_lighttoken.py").is_file():
            raise IncompleteCheckpointError(
                f"{folder} is an incomplete checkpoint: it has weights or model code but no config.json (an "
                "interrupted save or copy?); save or download it again"
            )
        raise FileNotFoundError(f"{folder} has no config.json: it is not a saved model checkpoint")
    config = _read_json(config_file)
    if config.get("model_type") != MODEL_TYPE:
        raise ValueError(
            f"{folder} is not a LightToken checkpoint (config.json has model_type "
            f"{config.get('model_type')!r}, expected {MODEL_TYPE!r}); compress a model first with "
            "`lighttoken compress`"
        )
    check_weights_complete(folder)
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
        "sentence_transformers_modules": sentence_transformers_module_types(folder),
        "files": {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()},
    }
def checkpoint_facts(model_or_dir: Any, report: Any = None) -> dict:
    """:func:`checkpoint_info` of a folder or :func:`model_info` of a LightToken model (``report`` replaces the
    recorded report)."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        info = checkpoint_info(model_or_dir)
        if report is not None:
            info["report"], info["report_source"] = to_json(report_dict(report)), "given report"
        return info
    if is_lighttoken_model(model_or_dir):
        return model_info(model_or_dir, report)
    raise TypeError(
        "expected a LightToken-compressed model (from lighttoken_hf.compress) or the folder of a saved "
        f"LightToken checkpoint, got {type(model_or_dir).__name__}"
    )


def check_publishable(folder: str | os.PathLike[str]) -> dict:
    """Facts of the checkpoint in ``folder``; raises if it cannot be loaded from the Hub as it is."""
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
