"""How one Koopman jump scales with the parameter count N (issue: Koopman core).

For each N: a float32 snapshot buffer of m = 16 snapshots (shape (m, N), as training records
it), one jump = ``fit_dmd(buffer.T, affine=True).predict(h)``, timed against one streaming
pass over the same buffer (``buffer.sum()``) in the same run, and the peak extra resident
memory of the jump (Linux VmHWM, reset before the jump) against the buffer's size.

Two jumps are timed: "cold" computes the T x T Gram matrix from the buffer (a float64 pass
over it) and then lifts the prediction (a second pass); "warm" is given the Gram matrix that
a recorder keeps up to date with ``koopt.core.gram_row`` as snapshots arrive, so only the
lift touches the buffer. ``record_s`` is the cost of that upkeep for the last snapshot.

    python benchmarks/jump_scaling.py            # N = 1e4 ... 1e8
    python benchmarks/jump_scaling.py --quick    # N = 1e4 ... 1e6

The last line printed is one JSON object with the figures.
Targets (issue): ratio <= 3 and peak extra memory <= 1.5x the buffer at N = 1e8.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from koopt import fit_dmd
from koopt.core import gram_row, local_gram

M = 16
HORIZON = 100


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def make_buffer(n: int) -> torch.Tensor:
    """A float32 (M, n) trajectory: a slow decaying drift plus per-snapshot noise."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(n, generator=g)
    drift = torch.randn(n, generator=g) * 1e-3
    buf = torch.empty(M, n, dtype=torch.float32)
    for k in range(M):
        buf[k] = base
        buf[k].add_(drift, alpha=1.0 - 0.9**k)
    return buf


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def measure(n: int) -> dict:
    buf = make_buffer(n)
    repeats = 3 if n <= 10**7 else 1
    stream = best_of(lambda: buf.sum(), repeats)

    def jump():
        return fit_dmd(buf.T, affine=True).predict(HORIZON)

    gram = local_gram(buf.T)

    def warm_jump():
        return fit_dmd(buf.T, affine=True, gram=gram).predict(HORIZON)

    jump()  # warm up (allocator, BLAS threads) outside the timing
    gc.collect()
    before = rss_bytes("VmRSS")
    reset_peak()
    t_jump = best_of(jump, repeats)
    peak_extra = max(0, rss_bytes("VmHWM") - before)
    t_warm = best_of(warm_jump, repeats)
    t_record = best_of(lambda: gram_row(buf.T), repeats)
    buffer_bytes = buf.numel() * buf.element_size()
    row = {
        "N": n,
        "buffer_MB": buffer_bytes / 2**20,
        "stream_s": stream,
        "jump_s": t_jump,
        "ratio": t_jump / stream,
        "warm_jump_s": t_warm,
        "warm_ratio": t_warm / stream,
        "record_s": t_record,
        "peak_extra_MB": peak_extra / 2**20,
        "peak_extra_vs_buffer": peak_extra / buffer_bytes,
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stop at N = 1e6")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both the jump and the streaming pass (default 1: "
        "on a shared 2-core machine more threads make both noisy)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [10**k for k in range(4, 7 if args.quick else 9)]
    rows = []
    print(
        f"{'N':>10} {'buffer MB':>10} {'stream s':>10} {'jump s':>10} {'ratio':>7} "
        f"{'warm s':>9} {'ratio':>7} {'record s':>9} {'peak extra MB':>14} {'x buffer':>9}"
    )
    for n in sizes:
        r = measure(n)
        gc.collect()
        rows.append(r)
        print(
            f"{n:>10.0e} {r['buffer_MB']:>10.1f} {r['stream_s']:>10.4f} {r['jump_s']:>10.4f} "
            f"{r['ratio']:>7.2f} {r['warm_jump_s']:>9.4f} {r['warm_ratio']:>7.2f} "
            f"{r['record_s']:>9.4f} {r['peak_extra_MB']:>14.1f} {r['peak_extra_vs_buffer']:>9.2f}",
            flush=True,
        )
    print(
        json.dumps(
            {
                "benchmark": "jump_scaling",
                "m": M,
                "horizon": HORIZON,
                "threads": torch.get_num_threads(),
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
