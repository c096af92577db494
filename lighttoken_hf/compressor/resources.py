"""What a compression runs with: row blocks, a device, torch threads and memory (docs/method.md, "Scale").

Every pass over a V x d matrix runs in blocks of rows, so the compressor's extra memory does not grow
with the vocabulary beyond a few V-row tensors; the heavy steps run on the chosen device; torch's
threads are fitted to the idle cores; freed blocks go back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator

import torch

#: Values of one temporary (rows x width) block: 1 Mi values, 4 MiB in fp32.
BLOCK_ELEMENTS = 1024 * 1024


#: Share of the matrix's values that one wide block may hold at most (see :func:`row_blocks`).
WIDE_BLOCK_SHARE = 0.25

#: Fewest rows of a block whose work runs column by column (bit refinement) or ends in a width x width
#: sum (a Gram matrix): fewer would make per-column overhead or the sum's cost dominate.
MIN_WIDE_BLOCK_ROWS = 8192


def row_blocks(
    rows: int, width: int, elements: int | None = None, *, wide: bool = False, at_most: int | None = None
) -> Iterator[slice]:
    """Consecutive row slices covering ``rows`` rows, each holding about ``elements`` values of ``width``
    (default :data:`BLOCK_ELEMENTS`); ``wide`` blocks have at least :data:`MIN_WIDE_BLOCK_ROWS` rows, but
    no more than ``at_most`` values where given (and not under the default size): on a small matrix coded
    with many bits, 8,192 rows of every bit would be larger than the matrix itself."""
    default = max(1, (BLOCK_ELEMENTS if elements is None else elements) // max(1, width))
    step = default
    if wide:
        step = max(step, MIN_WIDE_BLOCK_ROWS)
        if at_most is not None:
            step = max(default, min(step, at_most // max(1, width)))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


def map_rows(
    fn: Callable[[slice], torch.Tensor], rows: int, width: int, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A new float32 (rows x width) tensor whose every row block ``r`` is ``fn(r)`` (a slice of rows)."""
    out = torch.empty(rows, width, device=device)
    for block in row_blocks(rows, width):
        out[block] = fn(block)
    return out


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None``: a CUDA GPU when there is one, else the CPU; otherwise the named device, checked."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r} ({err})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for, but torch sees no CUDA GPU: use device='cpu' or 'auto'")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or a CUDA device, got {device!r}")
    return resolved


#: glibc's ``mallopt`` parameter number of the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (it has ``mallopt`` and ``malloc_trim``), else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - musl has neither
    except (OSError, AttributeError):
        return None
    return libc


def trim_free_memory() -> bool:
    """Give the free pages of every thread's heap back to the system (glibc ``malloc_trim``).

    Called between the compression's steps: what one step's worker threads freed in their heaps would
    otherwise stay resident through the next. Returns whether anything could be done (``False`` off glibc).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def return_freed_blocks_to_the_system(threshold: int = BLOCK_ELEMENTS) -> bool:
    """On glibc, serve allocations of ``threshold`` bytes and more by their own mapping (freed at once).

    glibc raises its mmap threshold each time a large block is freed, after which blocks of that size
    come from per-thread heaps that keep freed memory: with torch's worker threads the resident size of
    a compression grew to 27x the matrix (an ``nn_overlap`` loop alone kept 0.7 GB) instead of about 4x.
    A fixed threshold (what ``MALLOC_MMAP_THRESHOLD_`` sets) keeps block-sized buffers returnable. At
    1 MiB a 200,000 x 64 compression peaked at 2.4-2.5x the matrix (2.5-2.9x at 4 MiB) and MiniLM at 25x
    took about 10% longer (docs/method.md, "Scale"). Returns whether it was set (``False`` off glibc).
    """
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))


def _cpu_times() -> tuple[float, float] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat, or ``None`` where there is none."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0.0), sum(fields[:8])


def free_cores(interval: float = 0.2) -> int | None:
    """How many of this process's CPUs were idle over the last ``interval`` seconds (``None``: unknown)."""
    first = _cpu_times()
    if first is None:
        return None
    time.sleep(interval)
    second = _cpu_times()
    if second is None or second[1] <= first[1]:
        return None
    idle_share = (second[0] - first[0]) / (second[1] - first[1])
    allowed = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(allowed, round(idle_share * (os.cpu_count() or 1)))


class FittedThreads:
    """torch's intra-op thread count fitted to the idle cores, re-fitted on request (:meth:`refit`).

    torch starts one thread per core. When other processes keep cores busy, a parallel op waits at its
    end for a thread the system has descheduled, and the compressor runs thousands of short ops, so a
    thread count above the idle cores multiplies the time (docs/method.md, "Scale"). The count is at
    most torch's own and at least 1; ``threads`` fixes it instead; ``enabled=False`` keeps torch's.
    """

    def __init__(self, enabled: bool = True, threads: int | None = None) -> None:
        self.before = torch.get_num_threads()
        self.enabled = enabled and threads is None
        self.count = self.before if threads is None else threads
        self.counts: list[int] = []

    def refit(self) -> int:
        """Measure the idle cores now (0.2 s) and use that many threads; returns the count."""
        if self.enabled:
            free = free_cores()
            self.count = self.before if free is None else max(1, min(self.before, free))
        torch.set_num_threads(self.count)
        self.counts.append(self.count)
        return self.count

    def __enter__(self) -> FittedThreads:
        self.refit()
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes, or ``None`` where there is none."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class PeakResidentMemory:
    """The peak resident size of this process while a ``with`` block runs, over its size on entry.

    On Linux the kernel's high-water mark is reset on entry (``/proc/self/clear_refs``) and read on exit
    (``VmHWM``), so earlier peaks do not count. ``ru_maxrss`` is no substitute: it starts at the parent
    process's peak when a subprocess is spawned (a test under pytest read 31x the matrix that way).
    Elsewhere ``exact`` is ``False`` and the growth is ``ru_maxrss`` minus the size on entry, an upper bound.
    """

    def __init__(self) -> None:
        self.start = self.peak = 0
        self.exact = False

    @property
    def growth(self) -> int:
        """Bytes the resident size rose above its size on entry, at its peak."""
        return max(0, self.peak - self.start)

    def __enter__(self) -> PeakResidentMemory:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")  # 5: reset the peak resident size to the current one
            self.exact = True
        except OSError:
            self.exact = False
        self.start = _status_kib("VmRSS") or _ru_maxrss()
        return self

    def __exit__(self, *exc: object) -> None:
        peak = _status_kib("VmHWM") if self.exact else None
        self.peak = peak if peak is not None else _ru_maxrss()


def _ru_maxrss() -> int:
    """``ru_maxrss`` in bytes (kilobytes on Linux, bytes on macOS); 0 where ``resource`` is missing."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024
