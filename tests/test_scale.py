"""Scale: row-blocked passes give the unblocked result, memory stays bounded, the device reaches the work."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import FAST_SCHEDULE, make_planted_matrix

from lighttoken_hf import compress
from lighttoken_hf.compressor import resources
from lighttoken_hf.compressor.hashing import refine_bits
from lighttoken_hf.compressor.metrics import matrix_fidelity
from lighttoken_hf.compressor.resources import resolve_device, row_blocks
from lighttoken_hf.compressor.svd import low_rank_factors


def _codes(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t for name, t in module.state_dict().items()}


def test_row_blocks_cover_every_row_once():
    for rows, width, elements in [(0, 5, 10), (1, 5, 10), (17, 3, 10), (100, 1000, 10)]:
        covered = [i for block in row_blocks(rows, width, elements) for i in range(block.start, block.stop)]
        assert covered == list(range(rows))


def test_wide_blocks_are_capped_by_the_matrix_size_but_not_below_the_default():
    # 30,522 rows of 2,000 bits against a 30,522 x 384 matrix: 8,192-row blocks would be 1.4 matrices each
    at_most = int(resources.WIDE_BLOCK_SHARE * 30522 * 384)
    blocks = list(row_blocks(30522, 2000, wide=True, at_most=at_most))
    assert max(b.stop - b.start for b in blocks) * 2000 <= at_most
    assert [i for b in blocks for i in range(b.start, b.stop)] == list(range(30522))
    assert len(list(row_blocks(262144, 1800, wide=True, at_most=int(0.25 * 262144 * 640)))) == 32  # 8,192 rows
    default_rows = resources.BLOCK_ELEMENTS // 50
    assert next(iter(row_blocks(10**6, 50, wide=True, at_most=1))).stop == default_rows


def test_tiny_blocks_give_the_same_compression(monkeypatch):
    e = make_planted_matrix(vocab=2000)
    freqs = torch.rand(2000, generator=torch.Generator().manual_seed(3)) ** 4
    kwargs = dict(progress=False, schedule=FAST_SCHEDULE, token_frequencies=freqs)
    whole = compress(e, 8, **kwargs)
    monkeypatch.setattr(resources, "BLOCK_ELEMENTS", 97)  # every pass now runs over many small blocks
    blocked = compress(e, 8, **kwargs)
    assert whole.stage_bits == blocked.stage_bits and len(set(whole.stage_rows)) > 1  # a tier too
    a, b = whole.compression_report.fidelity, blocked.compression_report.fidelity
    assert b["rel_error"] == pytest.approx(a["rel_error"], rel=2e-3)
    codes = [name for name in _codes(whole) if name.startswith("codes_")]
    agree = sum(int(torch.equal(_codes(whole)[n], _codes(blocked)[n])) for n in codes)
    assert agree >= len(codes) // 2  # summation order may move a tie, never the result


def test_refine_bits_with_a_fixed_part_equals_refining_the_remainder():
    g = torch.Generator().manual_seed(0)
    signs = torch.where(torch.rand(300, 12, generator=g) > 0.5, 1.0, -1.0)
    weight, target = torch.randn(12, 6, generator=g), torch.randn(300, 6, generator=g)
    fixed, theta = torch.randn(300, 3, generator=g), torch.randn(3, 6, generator=g)
    plain, flips_plain = refine_bits(signs.clone(), target - fixed @ theta, weight, torch.zeros(6), 3)
    as_int8 = signs.to(torch.int8)
    with_fixed, flips = refine_bits(as_int8, target, weight, torch.zeros(6), 3, fixed=fixed, fixed_theta=theta)
    assert with_fixed is as_int8 and with_fixed.dtype == torch.int8  # refined in place, dtype kept
    assert torch.equal(with_fixed.float(), plain) and flips == flips_plain > 0


def test_blocked_randomized_svd_matches_the_exact_one():
    e = make_planted_matrix(vocab=3000, dim=40)
    left, right = low_rank_factors(e, 6, exact=False, power_iterations=6)
    exact_left, exact_right = low_rank_factors(e, 6, exact=True)
    assert torch.allclose(left @ right, exact_left @ exact_right, atol=2e-3)


def test_nn_overlap_matches_a_brute_force_search():
    g = torch.Generator().manual_seed(0)
    e = torch.randn(700, 16, generator=g)
    e_hat = e + 0.3 * torch.randn(700, 16, generator=g)
    got = matrix_fidelity(e, e_hat, nn_queries=700)["nn_overlap"]

    def neighbours(m):
        sims = torch.nn.functional.normalize(m, dim=1) @ torch.nn.functional.normalize(m, dim=1).T
        sims.fill_diagonal_(-float("inf"))
        return sims.topk(10, dim=1).indices

    a, b = neighbours(e), neighbours(e_hat)
    expected = float((a.unsqueeze(2) == b.unsqueeze(1)).any(2).float().sum(1).mean() / 10)
    assert got == pytest.approx(expected, abs=2e-3)


def test_device_cpu_and_auto_give_the_same_codes_here():
    e = make_planted_matrix()
    on_cpu = compress(e, 8, progress=False, schedule=FAST_SCHEDULE, device="cpu")
    auto = compress(e, 8, progress=False, schedule=FAST_SCHEDULE, device="auto")
    if resolve_device("auto").type == "cpu":
        for name, tensor in _codes(on_cpu).items():
            assert torch.equal(tensor, _codes(auto)[name]), name
    assert all(t.device.type == "cpu" for t in _codes(auto).values())  # the module is built on the CPU


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "meta"])
def test_a_bad_device_is_a_clear_error(device):
    with pytest.raises(ValueError, match="device"):
        compress(make_planted_matrix(), 8, progress=False, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match="no CUDA GPU"):
        compress(make_planted_matrix(), 8, progress=False, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on a machine with one)")
def test_gpu_codes_match_the_cpu_codes():
    e = make_planted_matrix()
    cpu = compress(e, 8, progress=False, schedule=FAST_SCHEDULE, device="cpu")
    gpu = compress(e, 8, progress=False, schedule=FAST_SCHEDULE, device="cuda")
    assert gpu.compression_report.fidelity["rel_error"] == pytest.approx(
        cpu.compression_report.fidelity["rel_error"], rel=0.02
    )


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, torch
    from lighttoken_hf.compressor.pipeline import compress_matrix
    from lighttoken_hf.compressor.settings import CompressionSettings
    from lighttoken_hf.compressor.resources import PeakResidentMemory
    g = torch.Generator().manual_seed(0)
    v, d = 200_000, 64
    settings = CompressionSettings(ratio=25, device="cpu")
    compress_matrix(torch.randn(2000, d, generator=g), settings, progress=False)  # warm-up: pools, imports
    matrix = torch.randn(v, d, generator=g) * torch.arange(1, d + 1) ** -0.5
    frequencies = torch.rand(v, generator=g) ** 8
    with PeakResidentMemory() as memory:  # not ru_maxrss: a spawned process starts at its parent's peak
        _, report = compress_matrix(matrix, settings, frequencies=frequencies, progress=False)
    print(json.dumps({"growth_x": memory.growth / (v * d * 4), "exact": memory.exact,
                      "stages": len(report.plan["stage_bits"]), "rel_error": report.fidelity["rel_error"]}))
    """
)


@pytest.mark.slow
def test_peak_memory_stays_within_three_matrices_at_200k_rows():
    # what a user gets: the allocator settings are the compressor's own (docs/method.md, "Scale")
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stages"] >= 3  # the frequency tiers ran too
    assert result["rel_error"] < 0.6
    assert result["growth_x"] <= 3.0, result


def test_fitted_threads_pin_restore_and_stay_within_torchs_count():
    before = torch.get_num_threads()
    with resources.FittedThreads(threads=1) as threads:
        assert torch.get_num_threads() == 1 and threads.counts == [1]
    assert torch.get_num_threads() == before
    with resources.FittedThreads() as fitted:
        assert 1 <= fitted.count <= before  # never more than torch's own count
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads", [0, -1, 1.5, True])
def test_a_bad_thread_count_is_a_clear_error(threads):
    with pytest.raises((ValueError, TypeError), match="threads"):
        compress(make_planted_matrix(), 8, progress=False, threads=threads)


def test_encoder_training_rows_per_epoch_cap_leaves_small_vocabularies_alone():
    e = make_planted_matrix()
    capped = compress(e, 8, progress=False, schedule={**FAST_SCHEDULE, "rows_per_epoch": 10**6})
    default = compress(e, 8, progress=False, schedule=FAST_SCHEDULE)
    for name, tensor in _codes(default).items():
        assert torch.equal(tensor, _codes(capped)[name]), name
    fewer = compress(e, 8, progress=False, schedule={**FAST_SCHEDULE, "rows_per_epoch": 64})
    assert fewer.compression_report.fidelity["rel_error"] < 1.0
