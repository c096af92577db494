"""The ``lighttoken`` console script: starts without importing torch, so ``--help`` answers at once.

``import lighttoken_hf`` registers its model classes with transformers, which imports torch and
transformers (seconds). This entry point defers that registration while it imports the command line;
the command line registers before it runs a command (:func:`lighttoken_hf.cli.main`).
"""

from __future__ import annotations

import os
import sys

_FLAG = "_LIGHTTOKEN_HF_DEFER_REGISTRATION"


def main() -> int:
    """Run ``lighttoken`` (see :mod:`lighttoken_hf.cli`)."""
    os.environ[_FLAG] = "1"
    try:
        from lighttoken_hf.cli import main as run
    finally:
        os.environ.pop(_FLAG, None)  # never inherited by anything the command starts
    return run(sys.argv[1:])
