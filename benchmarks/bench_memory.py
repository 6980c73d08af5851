"""Peak host memory of `genepanel select` on a file larger than the memory budget.

Writes dense samples × genes HDF5 matrices (low-rank signal plus noise) in chunks and
runs the CLI on each in a fresh process under /usr/bin/time, with
`input.host_memory_budget_gb` below the file size: a tiny file (the runtime's own
footprint), a large file loaded (`--no-stream`) and streamed (`--stream`), and a file
twice as large streamed. Prints peak resident memory (RSS). Usage:

    python benchmarks/bench_memory.py [--rows 60000] [--genes 4000] [--budget-gb 0.25]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def write_matrix(path: Path, rows: int, genes: int, rank: int = 20, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    loadings = rng.normal(size=(rank, genes)).astype(np.float32)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("X", shape=(rows, genes), dtype="f4", chunks=(256, genes))
        for start in range(0, rows, 4096):
            n = min(4096, rows - start)
            z = rng.normal(size=(n, rank)).astype(np.float32)
            ds[start : start + n] = z @ loadings + rng.normal(size=(n, genes)).astype(np.float32)
        f["genes"] = np.array([f"g{i}" for i in range(genes)], dtype="S")


def run(cmd: list[str]) -> tuple[float, float]:
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return kb / 2**20, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60000, help="rows of the large file")
    ap.add_argument("--genes", type=int, default=4000)
    ap.add_argument("--budget-gb", type=float, default=0.25)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = tmp / "budget.yaml"
        cfg.write_text(f"input:\n  host_memory_budget_gb: {args.budget_gb}\n"
                       f"train:\n  device_memory_budget_gb: {args.budget_gb}\n")
        # a tiny file (the runtime's own footprint), the large file and one twice as large
        for rows, modes in ((2000, ("--stream",)), (args.rows, ("--no-stream", "--stream")),
                            (2 * args.rows, ("--stream",))):
            data = tmp / f"m{rows}.h5"
            write_matrix(data, rows, args.genes)
            base = [sys.executable, "-m", "genepanel", "select", str(data), "--dataset", "/X",
                    "--genes", "/genes", "--k", "50", "--epochs", str(args.epochs),
                    "--batch-size", "256", "--config", str(cfg), "-q", "--overwrite"]
            for mode in modes:
                peak, wall = run([*base, mode, "--out", str(tmp / f"out{rows}{mode}")])
                results.append((rows, rows * args.genes * 4 / 2**30, mode, peak, wall))
            data.unlink()
    print(f"{args.genes} genes, float32; host memory budget {args.budget_gb} GiB; k = 50, "
          f"{args.epochs} epochs, batch 256")
    print(f"{'rows':>8} {'matrix GiB':>11} {'mode':<12} {'peak RSS GiB':>13} {'wall s':>7}")
    for rows, size, mode, peak, wall in results:
        print(f"{rows:>8} {size:>11.2f} {mode:<12} {peak:>13.2f} {wall:>7.1f}")


if __name__ == "__main__":
    main()
