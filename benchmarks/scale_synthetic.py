"""A streamed run on a synthetic count matrix with planted modules (make_synthetic.py).

Runs ``select_panel`` with ``--stream`` (the matrix stays on disk) and default training
options on the ``.h5ad`` written by ``make_synthetic.py`` and prints one Markdown row:
converged, steps, training and total seconds, peak resident memory of the process, and
module recovery: how many of the planted modules the panel measures (at least one
member among the k genes) against the k genes of highest training variance, beside the
linear-refit test MSE of both panels.

    python benchmarks/make_synthetic.py /tmp/syn.h5ad --cells 20000
    PYTHONPATH=$PWD python benchmarks/scale_synthetic.py /tmp/syn.h5ad --k 200

``--max-steps`` caps the run (a step-time measurement, reported as not converged).
``--log`` prints one line per epoch (steps, temperature, mean max probability, epoch
seconds, process CPU seconds so far, peak RSS so far), flushed, so that a long run's
progress can be followed and a killed run still says how far it got. The record's
``cpu_s`` is the process CPU time (user + sys, all threads), the comparable cost when
the cores are shared.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def cpu_s() -> float:
    """Process CPU seconds so far (user + sys, all threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_gib() -> float:
    """Peak resident memory of the process so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cae_and_topvar(data, res, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """The run's panel, the ``k`` top-variance genes of its training rows, and the
    held-out linear-refit MSE of both (fit on the training rows, one pass each way)."""
    from genepanel.evaluate import fit_linear, linear_test_mse
    from genepanel.prefilter import gene_variance

    pre, split = res.model.pre, res.split
    var = gene_variance(data, pre, split.train, seed=seed)
    top = np.sort(np.argsort(-var, kind="stable")[:k])
    cae = np.sort(res.panel.indices)
    mse = linear_test_mse(data, pre, split.test,
                          fit_linear(data, pre, split.train, {"cae": cae, "topvar": top}))
    return cae, top, mse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--preprocess", default="log1p")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after about this many steps")
    ap.add_argument("--set", default="", help="extra config changes: key=value;key=value")
    ap.add_argument("--json", help="append the record to this file")
    ap.add_argument("--log", action="store_true", help="print one line per epoch")
    args = ap.parse_args()

    import h5py

    from genepanel.api import load_input, select_panel
    from genepanel.config import SelectConfig
    from genepanel.train import effective_batch_size

    changes = {"input.stream": "yes"}
    for item in filter(None, args.set.split(";")):
        key, value = item.split("=", 1)
        changes[key] = json.loads(value)
    cfg = SelectConfig(k=args.k, preprocess=args.preprocess).replace(**changes)
    t0 = time.perf_counter()
    data = load_input(args.data, cfg)
    with h5py.File(args.data, "r") as f:
        module = np.asarray(f["var"]["module"][:])
    n_modules = int(module.max()) + 1
    n_train = round(data.shape[0] * cfg.split.train)
    steps_per_epoch = n_train // effective_batch_size(cfg.train.batch_size, n_train, 1,
                                                      data.shape[1])
    stop_after = max(1, args.max_steps // max(steps_per_epoch, 1)) if args.max_steps else None
    from genepanel.train import Interrupted

    t = time.perf_counter()

    def log(rec: dict) -> None:
        if "epoch" not in rec:
            return
        print(f"epoch {rec['epoch']}/{rec['epochs']} steps {rec['epoch'] * steps_per_epoch} "
              f"T {rec['temperature']:.4g} mean_max_prob {rec['mean_max_prob']:.4f} "
              f"collisions {rec['collisions']} epoch_s {rec['seconds']:.1f} "
              f"wall_s {time.perf_counter() - t0:.0f} cpu_s {cpu_s():.0f} "
              f"peak_rss_gib {peak_gib():.2f}", flush=True)

    try:
        res = select_panel(data, cfg, evaluate_baselines=False, stop_after_epochs=stop_after,
                           on_epoch=log if args.log else None)
    except Interrupted:
        secs = time.perf_counter() - t
        print(f"stopped after {stop_after or 'a signal at'} epochs ({secs:.0f} s); "
              "step time only: rerun without --max-steps for a converged panel")
        return
    wall = time.perf_counter() - t0
    tr = res.run["training"]
    steps = tr["epochs_run"] * tr["steps_per_epoch"]
    cae, top, mse = cae_and_topvar(data, res, args.k, cfg.seed)

    def covered(p: np.ndarray) -> int:
        return len(set(module[p][module[p] >= 0].tolist()))

    peak = peak_gib()
    rec = {"shape": list(data.shape), "k": args.k, "converged": tr["converged"],
           "reassigned": tr["reassigned_at_extraction"], "steps": steps,
           "train_s": res.timings["train"], "total_s": wall, "peak_rss_gib": peak,
           "ms_per_step": 1e3 * res.fit.seconds / max(steps, 1),
           "modules": n_modules, "cae_modules": covered(cae), "topvar_modules": covered(top),
           "cae_mse": mse["cae"], "topvar_mse": mse["topvar"], "path": tr["data_placement"],
           "batch_size": tr["batch_size"], "candidates": tr["candidate_genes"],
           "cpu_s": cpu_s(), "set": args.set, "panel": cae.tolist()}
    print("| cells × genes | k | converged | steps | ms/step | train s | total s | peak RSS GiB "
          "| modules hit: CAE | top-variance | of | test MSE: CAE | top-variance |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {data.shape[0]} × {data.shape[1]} | {args.k} | "
          f"{'yes' if rec['converged'] and not rec['reassigned'] else 'NO'} | {steps} | "
          f"{rec['ms_per_step']:.0f} | {rec['train_s']:.0f} | {wall:.0f} | {peak:.2f} | "
          f"{rec['cae_modules']} | {rec['topvar_modules']} | {n_modules} | "
          f"{rec['cae_mse']:.4f} | {rec['topvar_mse']:.4f} |")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
