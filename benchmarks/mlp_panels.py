"""Where a concrete autoencoder is needed: MLP-decoder panels scored with an MLP refit.

Issue 11, point 4(a): does the panel of ``genepanel select --decoder mlp`` beat greedy
column subset selection's panel when both are scored the same non-linear way — an MLP
refitted from the panel to every feature on the training rows (early stopping on the
validation rows), test MSE over every entry of the test rows? Also scored: the default
(linear decoder + swap refinement) panel and, for reference, each panel's linear refit.

Data: the MNIST and Fashion-MNIST test sets, split as in ``quality.py`` (first 5,400
rows train, next 600 validation, last 4,000 test). The MLP refit is
:class:`genepanel.compare.MLPFitter` (the decoder ``compare-landmarks --mlp`` uses):
hidden 256 (the select run's ``--hidden``), Adam 1e-3, batch 64, at most 300 epochs,
patience 20, ``--trials`` fresh initialisations (mean ± sd).

    python benchmarks/mlp_panels.py --datasets mnist --ks 10,25
    python benchmarks/mlp_panels.py --write-only

Results: ``benchmarks/results/mlp_panels/<data>_k<k>.json`` → ``mlp_panels.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mlp_panels"
OUT = ROOT / "benchmarks" / "mlp_panels.md"
HIDDEN = (256,)
NAMES = {"mnist": "MNIST test set", "fashion": "Fashion-MNIST test set"}
PANEL_NAMES = {"cae_mlp": "ours, `--decoder mlp --hidden 256`",
               "cae_linear": "ours, default (linear + refinement)",
               "greedy": "greedy subset selection", "topvar": "top-variance"}


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h", "--",
                               "genepanel"],  # the last commit that changed the code
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_one(name: str, k: int, trials: int) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import load

    from genepanel.api import select_panel
    from genepanel.compare import MLPFitter
    from genepanel.config import SelectConfig
    from genepanel.dataset import Dataset
    from genepanel.selectors import run_selector

    data, changes, _ = load(name)
    cfg = SelectConfig(k=k, seed=0).replace(**changes)
    panels, seconds, status = {}, {}, {}
    t = time.perf_counter()
    mlp = select_panel(data, cfg.replace(**{"model.decoder": "mlp", "model.hidden": HIDDEN}),
                       evaluate_baselines=False)
    seconds["cae_mlp"] = time.perf_counter() - t
    panels["cae_mlp"] = mlp.panel.indices
    status["cae_mlp"] = {"converged": bool(mlp.fit.converged),
                         "epochs": len(mlp.fit.history)}
    t = time.perf_counter()
    lin = select_panel(data, cfg, evaluate_baselines=False)
    seconds["cae_linear"] = time.perf_counter() - t
    panels["cae_linear"] = lin.panel.indices
    ds = Dataset.build(data, cfg)
    for m in ("greedy", "topvar"):
        sel = run_selector(m, ds, k, seed=0)
        panels[m], seconds[m] = sel.indices, sel.seconds
    x = np.asarray(data.X, np.float32)
    sp = mlp.split
    xtr, xva, xte = x[sp.train], x[sp.val], x[sp.test]
    fitter = MLPFitter(k, x.shape[1], HIDDEN, 1e-3)
    scores: dict[str, dict] = {}
    for m, p in panels.items():
        p = np.asarray(p)
        mses, epochs = [], []
        for trial in range(trials):
            params, info = fitter.fit(xtr[:, p], xtr, xva[:, p], xva, seed=trial, epochs=300,
                                      patience=20, batch_size=64)
            pred = fitter.predict(params, xte[:, p])
            mses.append(float(np.mean(np.square(pred.astype(np.float64) - xte))))
            epochs.append(info["epochs_run"])
        a = np.c_[xtr[:, p], np.ones(len(xtr))]
        coef, *_ = np.linalg.lstsq(a.astype(np.float64), xtr.astype(np.float64), rcond=None)
        lin_mse = float(np.mean(np.square(np.c_[xte[:, p], np.ones(len(xte))] @ coef - xte)))
        scores[m] = {"mlp_test_mse": mses, "mlp_epochs": epochs, "linear_test_mse": lin_mse}
        print(f"  {m}: MLP {np.mean(mses):.5f} ± {np.std(mses):.5f}, linear {lin_mse:.5f}",
              flush=True)
    return {"dataset": name, "k": k, "trials": trials, "scores": scores, "seconds": seconds,
            "status": status, "panels": {m: np.asarray(p).tolist() for m, p in panels.items()},
            "split": {"train": len(sp.train), "val": len(sp.val), "test": len(sp.test)},
            "date": dt.date.today().isoformat(), "commit": _commit()}


def write_report() -> str:
    recs = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*_k*.json"))]
    recs.sort(key=lambda r: (list(NAMES).index(r["dataset"]), r["k"]))
    lines = [
        "# MLP-decoder panels scored with an MLP refit",
        "",
        f"Written by `benchmarks/mlp_panels.py` on {dt.date.today().isoformat()}; machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores visible. Commits measured: "
        f"{', '.join(sorted({r.get('commit', '?') for r in recs}))}.",
        "",
        "Score: an MLP (one hidden layer of 256, ReLU; Adam 1e-3, batch 64, early stopping "
        "on the 600 validation rows, patience 20) refitted from the panel to every pixel on "
        "the 5,400 training rows; MSE over every entry of the 4,000 test rows, mean ± sd "
        "over the refit's initialisations. `linear` = the unregularised linear refit "
        "(the quality.md metric) of the same panel. Lower is better.",
        "",
        "| data | k | panel | MLP refit | linear refit | selection seconds |",
        "|---|---:|---|---:|---:|---:|",
    ]
    verdicts = []
    for r in recs:
        sc = r["scores"]
        for m in PANEL_NAMES:
            if m not in sc:
                continue
            v = np.array(sc[m]["mlp_test_mse"])
            lines.append(f"| {NAMES[r['dataset']]} | {r['k']} | {PANEL_NAMES[m]} | "
                         f"{v.mean():.5f} ± {v.std(ddof=1) if len(v) > 1 else 0:.5f} | "
                         f"{sc[m]['linear_test_mse']:.5f} | {r['seconds'][m]:.1f} |")
        a = np.array(sc["cae_mlp"]["mlp_test_mse"])
        b = np.array(sc["greedy"]["mlp_test_mse"])
        rel = 100 * (a.mean() / b.mean() - 1)
        how = ("every trial below greedy's" if a.max() < b.min() else
               "every trial above greedy's" if a.min() > b.max() else "trials overlap")
        verdicts.append(f"- {NAMES[r['dataset']]}, k = {r['k']}: MLP-decoder panel "
                        f"{a.mean():.5f} vs greedy {b.mean():.5f} under the MLP refit "
                        f"({rel:+.1f}%; {how}: "
                        f"MLP-panel trials {', '.join(f'{v:.5f}' for v in a)}; greedy "
                        f"{', '.join(f'{v:.5f}' for v in b)}).")
    lines += ["", "## MLP-decoder panel against greedy, under the MLP refit", "", *verdicts]
    text = "\n".join(lines) + "\n"
    from quality import write_keeping_notes

    write_keeping_notes(OUT, text)
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="mnist")
    ap.add_argument("--ks", default="10,25")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--write-only", action="store_true")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.write_only:
        for name in [s for s in args.datasets.split(",") if s]:
            for k in [int(v) for v in args.ks.split(",") if v]:
                t = time.perf_counter()
                print(f"{name} k={k}", flush=True)
                rec = run_one(name, k, args.trials)
                (RESULTS / f"{name}_k{k}.json").write_text(json.dumps(rec, indent=1))
                print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    print(write_report())


if __name__ == "__main__":
    main()
