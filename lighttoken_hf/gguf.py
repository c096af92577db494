"""Load a decoder LM stored as one GGUF file (llama.cpp's format) as a plain float transformers model.

transformers reads GGUF files (``from_pretrained(folder, gguf_file=name)``, needs the ``gguf``
package) and dequantizes every tensor to float, but the model it returns stays marked as quantized
"with gguf" and refuses ``save_pretrained``. :func:`load_gguf` rebuilds the same architecture from its
config without the quantization marker and moves the dequantized weights into it, so the result is an
ordinary model: it compresses, saves to safetensors and pushes like any other. The dequantized model is
treated as the original (its file's Q8_0/Q4_K weights are the best copy there is).
"""

from __future__ import annotations

import copy
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["is_gguf_file", "load_gguf"]

_MAGIC = b"GGUF"


def is_gguf_file(path: str | Path) -> bool:
    """True when ``path`` is a file that starts with the GGUF magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == _MAGIC


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    if not is_gguf_file(path):
        raise ValueError(
            f"{path} is not a GGUF file (it does not start with the bytes 'GGUF'); pass a llama.cpp .gguf "
            "model file, or a transformers model folder"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"reading {path.name} needs the `gguf` package: pip install gguf (or 'lighttoken-hf[llm]')"
        )


def _architecture(path: Path) -> str:
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as err:  # noqa: BLE001 - any parse failure means a damaged or foreign file
        raise ValueError(f"{path} is not a readable GGUF model file ({type(err).__name__}: {err})") from None


def load_gguf(path: str | Path, *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load the causal LM in GGUF file ``path`` as ``(model, tokenizer)``; the model is plain float.

    Args:
        path: a ``.gguf`` file holding a decoder LM (llama, gemma3, qwen2, ...).
        dtype: float dtype of the returned model's weights.

    Raises:
        FileNotFoundError / ValueError: no such file, not a GGUF file, or not a causal LM that
            transformers can read (the message names the file's architecture).
        ImportError: the ``gguf`` package is missing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser().absolute()
    _check_file(path)
    architecture = _architecture(path)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as err:
        raise ValueError(
            f"{path.name} holds a {architecture!r} model that transformers cannot load as a causal LM "
            f"({type(err).__name__}: {err}); LightToken's GGUF path takes decoder LMs transformers reads from "
            "GGUF (llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3, ...)"
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for key in ("gguf_file", "is_local", "local_files_only"):  # how it was read, not what it is
        tokenizer.init_kwargs.pop(key, None)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = str(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if getattr(config.get_text_config(), "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(
            f"the weights read from {path.name} do not match its {type(model).__name__} architecture "
            f"(missing: {sorted(set(missing) - tied)[:5]}, unexpected: {sorted(unexpected)[:5]})"
        )
    model.tie_weights()
    model.eval()
    model.name_or_path = str(path)
    del loaded
    return model, tokenizer
