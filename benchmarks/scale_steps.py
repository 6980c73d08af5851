"""Step time and peak memory of one training step against genes d and panel size k.

"before": the selector chooses among all d genes (``--prefilter 0``, the code path of
0.1.0); "after": the default candidate prefilter (the selector sees max(2000, 10 k) genes,
the decoder still reconstructs all d). The data are dense random values, so no gene is
constant: the other saving of the default path (genes constant on the training rows
leave the decoder) does not show here; see ``scale_celltypist.py`` for real data. No
convergence: this measures the cost of a step only. Each cell runs ``--epochs`` compiled
epochs of ``--steps`` steps after one warm-up epoch and reports the median time per
step. Peak memory is the process's peak resident set size after the cell
(``ru_maxrss``), measured in a fresh process per cell.

    PYTHONPATH=$PWD python benchmarks/scale_steps.py --d 2000,8000,16000,32786 --k 50,200,500
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def one_cell(d: int, k: int, batch: int, prefilter: int, steps: int, epochs: int) -> dict:
    import jax

    from genepanel.config import TrainConfig
    from genepanel.runtime import data_mesh
    from genepanel.train import Trainer, temperature

    rng = np.random.default_rng(0)
    n = batch * steps
    x = rng.standard_normal((n, d)).astype(np.float32)
    cols = None
    if 0 < prefilter < d:
        cols = np.sort(rng.choice(d, prefilter, replace=False))
    trainer = Trainer(k, d, (), TrainConfig(batch_size=batch), 0, data_mesh(), columns=cols)
    state = trainer.init_state()
    x_dev = jax.device_put(x, trainer._rep)
    perm = np.arange(n, dtype=np.int32).reshape(steps, batch)
    times, cpu = [], []
    for e in range(epochs + 1):
        temp = temperature(e, 10.0, 0.01, 100)
        t, c = time.perf_counter(), time.process_time()
        state, loss = trainer.epoch_fn(state, x_dev, perm, temp)
        float(loss)
        if e:
            times.append((time.perf_counter() - t) / steps)
            cpu.append((time.process_time() - c) / steps)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return {"d": d, "k": k, "batch": batch, "candidates": trainer.width,
            "ms_per_step": 1e3 * float(np.median(times)),
            "cpu_ms_per_step": 1e3 * float(np.median(cpu)), "peak_rss_mib": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", default="2000,8000,16000,32786")
    ap.add_argument("--k", default="50,200,500")
    ap.add_argument("--batch", type=int, default=25, help="the celltypist sample's default")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--prefilter", type=int, default=2000,
                    help="after: max(N, 10 k) candidates, as the default of select")
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        d, k, pf = (int(v) for v in args.cell.split(","))
        print(json.dumps(one_cell(d, k, args.batch, pf, args.steps, args.epochs)))
        return
    print("| d | k | before: candidates | ms/step | CPU ms/step | peak MiB | after: candidates "
          "| ms/step | CPU ms/step | peak MiB | CPU speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    rows = []
    for d in (int(v) for v in args.d.split(",")):
        for k in (int(v) for v in args.k.split(",")):
            row = {"d": d, "k": k}
            for tag, pf in (("before", 0), ("after", max(args.prefilter, 10 * k))):
                out = subprocess.run(
                    [sys.executable, __file__, "--cell", f"{d},{k},{pf}", "--batch",
                     str(args.batch), "--steps", str(args.steps), "--epochs", str(args.epochs)],
                    capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                row[f"{tag}_ms"] = r["ms_per_step"]
                row[f"{tag}_cpu"] = r["cpu_ms_per_step"]
                row[f"{tag}_mib"] = r["peak_rss_mib"]
                row[f"{tag}_cand"] = r["candidates"]
            rows.append(row)
            print(f"| {d} | {k} | {row['before_cand']} | {row['before_ms']:.2f} | "
                  f"{row['before_cpu']:.2f} | {row['before_mib']:.0f} | {row['after_cand']} | "
                  f"{row['after_ms']:.2f} | {row['after_cpu']:.2f} | {row['after_mib']:.0f} | "
                  f"{row['before_cpu'] / row['after_cpu']:.1f}× |", flush=True)


if __name__ == "__main__":
    main()
