"""Save a tiny compressed model and die at a chosen point, as ``kill -9`` or SIGTERM would make it.

Usage: ``python crash_save_script.py MODE OUT [TINY_MODEL_DIR]``. Modes:

- ``save-compressed-mid-weights``: ``save_compressed(..., overwrite=True)``, SIGKILL after half the weights.
- ``between-renames``: ``save_compressed(..., overwrite=True)`` over an existing checkpoint, SIGKILL right
  after the old checkpoint was renamed away and before the new one is renamed into place.
- ``save-pretrained-mid-weights``: ``model.save_pretrained(OUT)``, SIGKILL after half the weights.
- ``cli-sigterm``: ``lighttoken compress TINY_MODEL_DIR --out OUT``, SIGTERM to itself mid-weights; the
  process then exits with the command line's own exit code.
- ``hold``: reserve OUT (``reserve_output``), print ``ready`` and wait until standard input closes.

Only the moment of death is staged: the saving code that runs is the real one.
"""

from __future__ import annotations

import os
import signal
import sys

os.environ["HF_HUB_OFFLINE"] = "1"


def _die_mid_weights(sig: int) -> None:
    import transformers.modeling_utils

    real = transformers.modeling_utils.safe_save_file

    def half_then_die(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        size = os.path.getsize(filename)
        with open(filename, "r+b") as f:
            f.truncate(size // 2)
        os.kill(os.getpid(), sig)
        signal.pause() if hasattr(signal, "pause") else None  # let a handler (SIGTERM) run

    transformers.modeling_utils.safe_save_file = half_then_die


def _tiny_compressed():
    import torch
    from tiny_models import tiny_bert_config
    from transformers import BertModel

    import lighttoken_hf

    torch.manual_seed(0)
    model = BertModel(tiny_bert_config()).eval()
    return lighttoken_hf.compress(model, ratio=4, schedule={"max_epochs": 1}, progress=False)


def main() -> int:
    mode, out = sys.argv[1], sys.argv[2]
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if mode == "hold":
        from lighttoken_hf.saving import reserve_output

        with reserve_output(out):
            print("ready", flush=True)
            sys.stdin.read()
        return 0
    if mode == "cli-sigterm":
        from lighttoken_hf.cli import main as cli

        _die_mid_weights(signal.SIGTERM)
        return cli(["compress", sys.argv[3], "--out", out, "--ratio", "4", "--epochs", "1", "--no-progress"])

    compressed = _tiny_compressed()
    from lighttoken_hf.saving import save_compressed

    if mode == "save-compressed-mid-weights":
        _die_mid_weights(signal.SIGKILL)
        save_compressed(compressed, out, overwrite=True)
    elif mode == "save-pretrained-mid-weights":
        _die_mid_weights(signal.SIGKILL)
        compressed.save_pretrained(out)
    elif mode == "between-renames":
        real_rename = os.rename

        def rename_then_die(src, dst, *args, **kwargs):
            real_rename(src, dst, *args, **kwargs)
            if ".old-" in os.fspath(dst):
                os.kill(os.getpid(), signal.SIGKILL)

        os.rename = rename_then_die
        save_compressed(compressed, out, overwrite=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
