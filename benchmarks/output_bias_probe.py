"""Probe (step 5): would a per-token output logit bias recover a tied LM's perplexity at a high ratio?

    python benchmarks/output_bias_probe.py --ratio 25

A tied output layer's logit error for token v is ``h . delta_v`` (``delta_v`` the row's reconstruction
error, ``h`` a final hidden state). Its mean over positions is a per-token constant that one stored scalar
per row could cancel: ``c_v = -mu_v . delta_v`` with ``mu_v`` the ``p_v (1 - p_v)``-weighted mean of ``h``
(the output side of the LM metric), or a single global mean ``h_bar``. This compresses SmolLM2-135M with
the defaults, estimates ``mu_v`` and ``h_bar`` on the default calibration text (wordfreq pseudo-sentences,
never the evaluation text) and scores perplexity on the first 60 unique SQuAD train contexts (not the
200 held-out ones of lm_benchmark.py) with the logits plus each bias, added by a hook (no format change).
Writes ``benchmarks/results/output_bias_probe_smollm2_<ratio>x.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_io import REPO_ROOT, git_info, machine_info, write_json  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=25)
    parser.add_argument("--texts", type=int, default=60)
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT.parent / "shared" / "data")
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import torch
    from lm_benchmark import with_matrix

    import lighttoken_hf as lt
    from lighttoken_hf.compressor.frequencies import general_text_samples
    from lighttoken_hf.compressor.metrics import tokenized_batches
    from lighttoken_hf.gguf import load_gguf
    from lighttoken_hf.pretrained import smollm2_gguf_path

    torch.manual_seed(0)
    model, tok = load_gguf(smollm2_gguf_path())
    model.eval()
    files = sorted((args.data_dir / "squad").glob("*.parquet"))
    contexts = list(dict.fromkeys(pq.read_table(files[0], columns=["context"]).column("context").to_pylist()))
    dev = contexts[: args.texts]  # disjoint from lm_benchmark's last 200
    original = model.get_input_embeddings().weight.detach().float().clone()
    start = time.perf_counter()
    compressed = lt.compress(model, ratio=args.ratio, tokenizer=tok, progress=False)
    seconds = time.perf_counter() - start
    rebuilt = compressed.get_input_embeddings().weight.detach().float().clone()
    delta = (rebuilt - original).double()

    v, d = original.shape
    weighted = torch.zeros(v, d, dtype=torch.float64)
    mass = torch.zeros(v, dtype=torch.float64)
    h_sum, h_sq, count = torch.zeros(d, dtype=torch.float64), 0.0, 0
    finals: list = []
    hook = model.get_output_embeddings().register_forward_pre_hook(lambda _m, i: finals.append(i[0]))
    with torch.no_grad():
        for batch in tokenized_batches(tok, general_text_samples(seed=0), batch_size=4, max_length=128, device="cpu"):
            finals.clear()
            logits = model(**batch).logits.float()
            mask = batch["attention_mask"].bool()
            p = torch.softmax(logits[mask], -1).double()
            h = finals[0][mask].double()
            w = p * (1 - p)
            weighted += w.T @ h
            mass += w.sum(0)
            h_sum += h.sum(0)
            h_sq += float((h * h).sum())
            count += h.shape[0]
    hook.remove()
    h_bar = h_sum / count
    mu = weighted / mass.clamp_min(1e-30).unsqueeze(1)
    biases = {"token_bias": -(mu * delta).sum(1).float(), "global_bias": -(delta @ h_bar).float()}

    def perplexity(candidate, bias=None) -> float:
        handle = None
        if bias is not None:
            handle = candidate.get_output_embeddings().register_forward_hook(lambda _m, _i, out: out + bias)
        nll = tokens = 0.0
        with torch.no_grad():
            for text in dev:
                ids = tok(text, return_tensors="pt", truncation=True, max_length=256)["input_ids"]
                logp = torch.log_softmax(candidate(input_ids=ids).logits[0, :-1].float(), -1)
                nll -= float(logp.gather(1, ids[0, 1:, None]).sum())
                tokens += ids.shape[1] - 1
        if handle is not None:
            handle.remove()
        return math.exp(nll / tokens)

    swapped = with_matrix(model, rebuilt)
    result = {"original": perplexity(model), "compressed": perplexity(swapped)}
    for name, bias in biases.items():
        result[name] = perplexity(swapped, bias)
    payload = {
        "benchmark": "output_bias_probe",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git": git_info(),
        "ratio": args.ratio,
        "texts": {"source": "SQuAD v1.1 train contexts (first unique ones)", "count": len(dev), "max_length": 256},
        "compress_seconds": seconds,
        "mean_share_of_squared_hidden_norm": float(h_bar.norm() ** 2) / (h_sq / count),
        "perplexity": result,
    }
    write_json(REPO_ROOT / "benchmarks" / "results" / f"output_bias_probe_smollm2_{args.ratio:g}x.json", payload)
    print(payload["perplexity"], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
