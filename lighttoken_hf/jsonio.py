"""JSON for reports, configs and statistics: one sanitizer (:func:`to_json`) and one atomic writer
(:func:`write_json`), shared by the compressor, saving, the Trainer callback, tasks and benchmarks.

Only the standard library: tensors and numpy values are recognised by their ``tolist``/``item`` methods.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["to_json", "write_json"]


def to_json(value: Any) -> Any:
    """A strict-JSON copy of ``value``: NaN/Inf become ``null``, tuples lists, tensors and numpy values plain
    numbers (or lists), keys strings, any other object its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if callable(getattr(value, "tolist", None)) and not isinstance(value, (str, bytes)):
        return to_json(value.tolist())  # torch tensors, numpy arrays and numpy scalars
    return str(value)


def write_json(path: str | os.PathLike[str], data: Any, *, sort_keys: bool = False) -> Path:
    """Write :func:`to_json` of ``data`` to ``path`` as indented JSON, atomically: a temporary file in the same
    folder renamed over it, so a reader never sees half a file. Creates the folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(to_json(data), indent=2, sort_keys=sort_keys, allow_nan=False) + "\n", "utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
