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
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .checkpoint import REPORT_FILENAME, is_lighttoken_checkpoint, report_dict
from .core.modeling_lighttoken import recover_interrupted_saves
from .jsonio import to_json

__all__ = ["CARD_FILENAME", "check_output_dir", "reserve_output", "save_compressed"]

logger = logging.getLogger(__name__)

CARD_FILENAME = "README.md"


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


def _protected(path: Path, source: str | os.PathLike[str] | None) -> str | None:
    """Why ``path`` may never be (re)written as an output folder, or ``None``."""
    resolved = path.resolve()
    if resolved.parent == resolved:
        return "it is a filesystem root"
    cwd = Path.cwd().resolve()
    if resolved == cwd:
        return "it is the current directory"
    if resolved in cwd.parents:
        return "it holds the current directory"
    home = Path.home().resolve()
    if resolved == home or resolved in home.parents:
        return "it is your home directory" if resolved == home else "it holds your home directory"
    if source is not None:
        src = Path(source).expanduser().resolve()
        if resolved == src or resolved in src.parents:
            return f"it {'is' if resolved == src else 'holds'} the source model {source}"
    return None


def check_output_dir(
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    source: str | os.PathLike[str] | None = None,
) -> Path:
    """Check that a compressed model can be saved to ``out_dir``, before doing any work.

    Args:
        out_dir: destination folder; it may not exist yet (missing parents are created on save).
        overwrite: allow replacing an existing, non-empty folder, which must then be a LightToken
            checkpoint (``--overwrite`` never deletes anything else).
        source: the uncompressed model's folder or file, which the output may not replace.

    Returns:
        The absolute destination path.

    Raises:
        ValueError: ``out_dir`` is empty, or is the current directory, one of its parents, the home
            directory, a filesystem root or the source model's folder (or holds it).
        FileExistsError: ``out_dir`` is a non-empty folder and ``overwrite`` is false, it is a non-empty
            folder that is not a LightToken checkpoint, or it is a file.
        PermissionError: the folder that would hold ``out_dir`` is not writable.
    """
    if not str(out_dir).strip():
        raise ValueError("the output path is empty; name a new folder for the compressed model")
    path = _target(out_dir)
    why = _protected(path, source)
    if why is not None:
        raise ValueError(f"refusing to write the output to {path}: {why}; choose a new folder for the output")
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(
                f"the output path {path} exists and is not a directory; choose a directory path for the "
                "output"
            )
        if any(path.iterdir()):
            if not overwrite:
                raise FileExistsError(
                    f"the output directory {path} already exists and is not empty; choose another "
                    "directory, or pass overwrite=True (command line: --overwrite) to replace it"
                )
            if not is_lighttoken_checkpoint(path):
                raise FileExistsError(
                    f"refusing to overwrite {path}: it is not a LightToken checkpoint (no config.json with "
                    "model_type 'lighttoken'), and overwrite only replaces a folder that lighttoken wrote; "
                    "choose another output folder, or move that folder away yourself"
                )
    anchor = _nearest_existing(path.parent)
    if not anchor.is_dir():
        raise FileExistsError(f"cannot create {path}: {anchor} exists and is not a directory")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: the directory {anchor} is not writable")
    return path


_HELD: dict[Path, int] = {}  # destinations this process has reserved -> nesting depth


@contextlib.contextmanager
def reserve_output(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Reserve ``out_dir`` for this process while the block runs, before any slow work.

    A lock file ``.{name}.lock`` beside the destination is held (``fcntl.flock``, released by the
    system even if the process is killed), so a second process writing the same folder is refused at
    once instead of after its whole compression. Holding the lock, stale staging folders of interrupted
    saves to the same destination are cleaned up, and an overwrite interrupted between its two renames is
    undone (the previous checkpoint is moved back); each such step is logged. Missing parent folders are
    created, and removed again on exit if nothing was saved. Re-entrant within one process.

    Raises:
        FileExistsError: another process holds the reservation.
    """
    path = _target(out_dir)
    if path in _HELD:
        _HELD[path] += 1
        try:
            yield path
        finally:
            _HELD[path] -= 1
        return
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    handle = _acquire(lock, path)
    _HELD[path] = 1
    try:
        for message in recover_interrupted_saves(path):
            logger.warning("lighttoken: %s", message)
        yield path
    finally:
        del _HELD[path]
        with contextlib.suppress(OSError):
            lock.unlink()
        handle.close()
        if not path.exists():
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _acquire(lock: Path, target: Path) -> Any:
    """Open and lock ``lock`` without waiting; the open file holds the lock until closed."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; saving stays atomic, concurrent runs are not refused
        return open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - closed by reserve_output
    while True:
        handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - closed by reserve_output
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise FileExistsError(
                f"another process (pid {owner}) is writing {target}; wait for it to finish, or choose "
                "another output folder"
            ) from None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file that its previous holder unlinked meanwhile
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return handle
        handle.close()


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

    Everything is written into a temporary sibling folder ``.{name}.tmp-{pid}-<random>`` (same parent, so
    the final rename is atomic), which is then renamed to ``out_dir``. With ``overwrite=True`` an existing
    LightToken checkpoint is renamed away (``.{name}.old-{pid}-<random>``), the new one renamed in, and only
    then is the old one deleted. On any error or ``KeyboardInterrupt`` the temporary folder is removed and
    ``out_dir`` is left untouched; after a ``kill -9`` the next save to ``out_dir`` cleans up (see
    :func:`reserve_output`). The destination is reserved for the whole save.

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
            process created it meanwhile, or is writing it now), it is not a LightToken checkpoint, or it
            is a file.
        FileNotFoundError: ``source_dir`` is not a folder.
        ValueError: ``out_dir`` is a folder that is never overwritten (see :func:`check_output_dir`), or
            ``source_dir`` is a sentence-transformers model whose modules cannot be kept (broken
            ``modules.json``, or no single Transformer module first).
    """
    target = check_output_dir(out_dir, overwrite=overwrite, source=source_dir)
    st_layout = None
    if source_dir is not None:
        from .sentence_transformers_support import sentence_transformers_layout

        st_layout = sentence_transformers_layout(source_dir)
        if st_layout is not None and tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(st_layout.transformer_dir)
    if report is None:
        report = getattr(model, "compression_report", None)
    report_data = to_json(report_dict(report)) if report is not None else None

    with reserve_output(target):
        check_output_dir(target, overwrite=overwrite, source=source_dir)  # again, after any recovery
        _save_staged(model, target, tokenizer, st_layout, report_data, card, overwrite)
    return target


def _save_staged(
    model: Any, target: Path, tokenizer: Any, st_layout: Any, report_data: Any, card: Any, overwrite: bool
) -> None:
    """Write the checkpoint into a staging folder beside ``target`` and rename it into place."""
    pid = os.getpid()
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{pid}-", dir=target.parent))
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
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-{pid}-", dir=target.parent))
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


