#!/usr/bin/env python
"""Seconds per epoch: genepanel against the authors' Keras package, same data and batch.

The authors' package (``concrete-autoencoder==0.0.1``) needs TensorFlow 2.15 and
``numpy<2``, so it runs in its own virtual environment, never the project's::

    python3 -m venv /tmp/cae_venv
    /tmp/cae_venv/bin/pip install "tensorflow-cpu==2.15.1" "keras==2.15.*" "numpy<2" \\
        "concrete-autoencoder==0.0.1"
    .venv/bin/python benchmarks/bench_authors.py --authors-python /tmp/cae_venv/bin/python

Both sides train on the PBMC matrix that ships inside scanpy (700 cells × 765 genes,
log1p values), the same 72/8/20 split, k = 50, batch 16, a linear decoder, Adam 1e-3,
and evaluate the validation loss after every epoch. Each trains ``--epochs`` epochs
(the first, which compiles, is left out of the median). Only seconds per epoch are
compared in this mode.

``--converge`` measures, in one run, the time to a *converged* panel (each side's own
stopping rule fired) and the test error of that panel:

* the authors' package with its own defaults (300 epochs, Adam 1e-3, temperature
  10 → 0.1, its ``StopperCallback`` and its retry loop that doubles the epochs, at most
  5 tries) except k = 50, a linear ``Dense`` decoder and batch 16 (also its default for
  504 training rows); wall time of ``fit`` (graph building and compilation included),
  epochs over all tries, and ``get_support(indices=True)``;
* genepanel through :func:`genepanel.api.select_panel` (the library path), same data
  and split (``genepanel.data.make_split``, 72/8/20, same seed), k = 50, linear decoder,
  with settings that converge (``--fast``: lr 1e-2, batch 32, and batch 16, E = 1000;
  the stopping rule ends the run) and with the authors' settings (lr 1e-3, batch 16,
  T 10 → 0.1, E = 300 doubled on failure, at most 5 tries: the same cap of 9,300 epochs
  as the package); wall time of training (``timings["train"]``, JIT compilation
  included);
* every panel scored identically: unregularised linear regression refitted on the
  training rows, MSE over every entry of the test rows (``genepanel.evaluate``), with
  random panels (mean of 5) and highly variable genes as baselines.

genepanel runs first; the authors' package then gets ``--authors-timeout`` seconds
(default 1800) and, if it is cut off, the state it reached is reported::

    .venv/bin/python benchmarks/bench_authors.py --converge \\
        --out benchmarks/results/authors-converge-$(date +%F).json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AUTHORS_SCRIPT = r"""
import json, sys, time
import numpy as np
from keras.callbacks import Callback
from keras.layers import Dense
from concrete_autoencoder import ConcreteAutoencoderFeatureSelector

data = np.load(sys.argv[1])
k, batch, epochs = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

class Clock(Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times.append(time.perf_counter() - self.t)

times = []
import keras
orig_fit = keras.Model.fit
def fit(self, *a, **kw):  # add the clock to the package's own callbacks
    kw["callbacks"] = list(kw.get("callbacks") or []) + [Clock()]
    kw["verbose"] = 0
    return orig_fit(self, *a, **kw)
keras.Model.fit = fit
d = data["train"].shape[1]
sel = ConcreteAutoencoderFeatureSelector(
    K=k, output_function=lambda u: Dense(d)(u), num_epochs=epochs, batch_size=batch,
    tryout_limit=1,
)
sel.fit(data["train"], data["train"], data["val"], data["val"])
print("@@RESULT " + json.dumps({"epoch_s": times}))
"""


AUTHORS_CONVERGE_SCRIPT = r"""
import json, sys, time
import numpy as np
import keras
from keras import backend as KB
from keras.callbacks import Callback
from keras.layers import Dense
from concrete_autoencoder import ConcreteAutoencoderFeatureSelector

data = np.load(sys.argv[1])
k, batch, epochs, tries = (int(a) for a in sys.argv[2:6])
train, val = data["train"], data["val"]
d = train.shape[1]
log = []

def emit(tag, rec):
    print(tag + " " + json.dumps(rec), flush=True)

def probs(model):
    return KB.get_value(KB.softmax(model.get_layer("concrete_select").logits))

class Progress(Callback):  # every 100 epochs: where the run stands (for a cut-off run)
    def on_train_begin(self, logs=None):
        self.n = 0
    def on_epoch_end(self, epoch, logs=None):
        self.n += 1
        if self.n % 100 == 0:
            p = probs(self.model)
            emit("@@PROG", {"try": len(log) + 1, "epoch": self.n,
                            "seconds": time.perf_counter() - T0,
                            "mean_max": float(p.max(1).mean()),
                            "val_loss": float((logs or {}).get("val_loss", float("nan"))),
                            "indices": p.argmax(1).tolist()})

orig_fit = keras.Model.fit
def fit(self, *a, **kw):  # wrap each try of the package's own loop, change nothing else
    cb = Progress()
    kw["callbacks"] = list(kw.get("callbacks") or []) + [cb]
    kw["verbose"] = 0
    t = time.perf_counter()
    hist = orig_fit(self, *a, **kw)
    p = probs(self)
    rec = {"try": len(log) + 1, "epochs": cb.n, "seconds": time.perf_counter() - t,
           "mean_max": float(p.max(1).mean()), "global_max": float(p.max()),
           "val_loss": float(hist.history["val_loss"][-1])}
    log.append(rec)
    emit("@@TRY", rec)
    return hist
keras.Model.fit = fit

T0 = time.perf_counter()
sel = ConcreteAutoencoderFeatureSelector(
    K=k, output_function=lambda u: Dense(d)(u), num_epochs=epochs, batch_size=batch,
    tryout_limit=tries,
)
sel.fit(train, train, val, val)
wall = time.perf_counter() - T0
logits = sel.model.get_layer("concrete_select").logits
# The package's own test after each try, verbatim (note: a max over all entries).
check = float(KB.get_value(KB.mean(KB.max(KB.softmax(logits, axis=-1)))))
emit("@@RESULT", {"wall_s": wall, "tries": log, "package_check": check,
                  "converged": check >= 0.998,
                  "indices": [int(i) for i in sel.get_support(indices=True)]})
"""


def load_pbmc() -> np.ndarray:
    import scanpy as sc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pbmc = sc.datasets.pbmc68k_reduced()
    x = pbmc.raw.X
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return x.astype(np.float32)


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.random.default_rng(seed).permutation(n)
    a, b = int(0.72 * n), int(0.80 * n)
    return idx[:a], idx[a:b], idx[b:]


def run_ours(x: np.ndarray, tr: np.ndarray, va: np.ndarray, args: argparse.Namespace) -> list:
    import pandas as pd

    from genepanel.config import TrainConfig
    from genepanel.data import Preprocessor
    from genepanel.io import ExpressionData
    from genepanel.runtime import data_mesh
    from genepanel.train import RowSource, Trainer, fit

    data = ExpressionData(
        x, [f"g{i}" for i in range(x.shape[1])], pd.DataFrame(index=range(len(x))), "pbmc"
    )
    pre = Preprocessor("none")
    cfg = TrainConfig(max_epochs=args.epochs, batch_size=args.batch_size, stop_threshold=1.0)
    trainer = Trainer(args.k, x.shape[1], (), cfg, args.seed, data_mesh())
    res = fit(
        trainer,
        RowSource(data, pre, tr, materialize=True),
        RowSource(data, pre, va, materialize=True),
    )
    return [h["seconds"] for h in res.history if "seconds" in h]


# --------------------------------------------------------------------------- --converge


def ours_settings(fast: bool) -> list[tuple[str, str, dict]]:
    """genepanel's runs: (label, settings, ``SelectConfig.replace`` overrides)."""
    runs = []
    if fast:
        for b in (32, 16):
            runs.append((f"genepanel lr1e-2 b{b}",
                         f"lr 1e-2, batch {b}, T 10→0.01 over E=1000 (cap 1000 epochs)",
                         {"train.learning_rate": 1e-2, "train.batch_size": b,
                          "train.max_epochs": 1000}))
    runs.append(("genepanel, authors' settings",
                 "lr 1e-3, batch 16, T 10→0.1, E=300 doubled on failure, ≤5 tries "
                 "(cap 9,300 epochs)",
                 {"train.learning_rate": 1e-3, "train.batch_size": 16, "train.tb": 0.1,
                  "train.max_epochs": 300, "train.retry_unconverged": True,
                  "train.max_retries": 4}))
    return runs


def run_ours_converge(data, k: int, seed: int, overrides: dict) -> dict:
    from genepanel.api import select_panel
    from genepanel.config import SelectConfig

    cfg = SelectConfig(k=k, seed=seed).replace(**{"train.checkpoint_every": 0, **overrides})
    res = select_panel(data, cfg, evaluate_baselines=False)
    f = res.fit
    return {
        "converged": bool(f.converged),
        "epochs": f.epochs_run,  # over all attempts
        "attempts": f.attempts,
        "stop_epoch": f.stop_epoch,
        "batch": f.batch_size,
        "steps_per_epoch": f.steps_per_epoch,
        "wall_s": res.timings["train"],
        "mean_max": f.history[-1]["mean_max_prob"],
        "indices": [int(i) for i in res.panel.indices],
        "decoder_test_mse": res.metrics["trained_decoder_test_mse"],
    }


def run_authors_converge(
    x: np.ndarray, tr: np.ndarray, va: np.ndarray, args: argparse.Namespace
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "data.npz"
        np.savez(npz, train=x[tr], val=x[va])
        script = Path(tmp) / "authors_converge.py"
        script.write_text(AUTHORS_CONVERGE_SCRIPT)
        logf = Path(tmp) / "log.txt"
        cmd = [args.authors_python, str(script), str(npz), str(args.k),
               str(args.batch_size), str(args.authors_epochs), str(args.authors_tries)]
        t = time.perf_counter()
        with logf.open("w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, text=True)
            try:
                rc = proc.wait(timeout=args.authors_timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                timed_out = True
        wall = time.perf_counter() - t
        text = logf.read_text(errors="replace")

    def tagged(tag: str) -> list[dict]:
        return [json.loads(s[len(tag) + 1 :]) for s in text.splitlines() if s.startswith(tag)]

    res, tries, prog = tagged("@@RESULT"), tagged("@@TRY"), tagged("@@PROG")
    if res:
        out = res[-1]
        out["process_wall_s"] = wall
        out["epochs"] = sum(r["epochs"] for r in out["tries"])
        out["mean_max"] = out["tries"][-1]["mean_max"]
        out["timed_out"] = False
        return out
    if not timed_out:
        print(text[-4000:], file=sys.stderr)
        msg = f"the authors' package failed (exit {rc})"
        raise RuntimeError(msg)
    last = prog[-1] if prog else {}
    done = sum(r["epochs"] for r in tries)
    cur = last.get("epoch", 0) if last.get("try") == len(tries) + 1 else 0
    return {"timed_out": True, "converged": False, "wall_s": wall, "process_wall_s": wall,
            "tries": tries, "last_progress": {k: v for k, v in last.items() if k != "indices"},
            "epochs": done + cur, "mean_max": last.get("mean_max"),
            "indices": last.get("indices")}


def converge(args: argparse.Namespace) -> int:
    import pandas as pd

    from genepanel.config import SplitConfig
    from genepanel.data import Preprocessor, make_split
    from genepanel.evaluate import fit_linear, hvg_panel, linear_test_mse, random_panels
    from genepanel.io import ExpressionData

    t_all = time.perf_counter()
    x = load_pbmc()
    n, d = x.shape
    data = ExpressionData(x, [f"g{i}" for i in range(d)], pd.DataFrame(index=range(n)), "pbmc")
    sp = make_split(n, SplitConfig(), args.seed, data.obs)

    rows: list[dict] = []
    for label, settings, over in ours_settings(not args.no_fast):
        print(f"[{time.perf_counter() - t_all:6.0f} s] {label} …", file=sys.stderr, flush=True)
        r = run_ours_converge(data, args.k, args.seed, over)
        rows.append({"method": label, "settings": settings, **r})
    print(f"[{time.perf_counter() - t_all:6.0f} s] authors' package (timeout "
          f"{args.authors_timeout} s) …", file=sys.stderr, flush=True)
    a = run_authors_converge(x, sp.train, sp.val, args)
    a_settings = (f"package defaults (lr 1e-3, T 10→0.1, E={args.authors_epochs} doubled "
                  f"on failure, ≤{args.authors_tries} tries), batch {args.batch_size}")
    rows.append({"method": "authors' concrete-autoencoder 0.0.1", "settings": a_settings, **a})

    pre = Preprocessor("none").fit(data, sp.train)
    panels = {r["method"]: np.asarray(r["indices"]) for r in rows if r.get("indices")}
    rand = random_panels(d, args.k, args.seed, 5)
    for i, p in enumerate(rand):
        panels[f"random_{i}"] = p
    panels["hvg"], hvg_method = hvg_panel(data, pre, sp.train, args.k, seed=args.seed)
    mse = linear_test_mse(data, pre, sp.test, fit_linear(data, pre, sp.train, panels))
    for r in rows:
        r["test_mse"] = mse.get(r["method"])
        r["unique_genes"] = len(set(r["indices"])) if r.get("indices") else None
    rand_mse = [mse[f"random_{i}"] for i in range(len(rand))]

    auth = rows[-1]
    lines = [
        "| method | settings | converged? | epochs | wall s to panel | test MSE | unique genes |",
        "|---|---|:-:|--:|--:|--:|--:|",
    ]
    for r in rows:
        conv = "yes" if r["converged"] else ("no (cut off)" if r.get("timed_out") else "no")
        tm = f"{r['test_mse']:.4f}" if r["test_mse"] is not None else "—"
        lines.append(f"| {r['method']} | {r['settings']} | {conv} | {r['epochs']} | "
                     f"{r['wall_s']:.1f} | {tm} | {r['unique_genes']} |")
    lines.append(f"| random panels (mean of 5 ± sd) | — | — | — | — | "
                 f"{np.mean(rand_mse):.4f} ± {np.std(rand_mse, ddof=1):.4f} | {args.k} |")
    lines.append(f"| highly variable genes | {hvg_method} | — | — | — | {mse['hvg']:.4f} | "
                 f"{args.k} |")
    lines.append("")
    lines.append("Authors' package, per try (its own retry loop):")
    lines.append("")
    lines.append("| try | epochs | s | mean max p (StopperCallback's monitor) | "
                 "max p over all (the package's test, ≥ 0.998) | val loss |")
    lines.append("|--:|--:|--:|--:|--:|--:|")
    for t in auth.get("tries", []):
        lines.append(f"| {t['try']} | {t['epochs']} | {t['seconds']:.1f} | {t['mean_max']:.4f} "
                     f"| {t['global_max']:.4f} | {t['val_loss']:.4f} |")
    if auth.get("timed_out"):
        lp = auth.get("last_progress", {})
        mm = lp.get("mean_max", float("nan"))
        lines.append(f"\nCut off after {auth['wall_s']:.0f} s, during try {lp.get('try')} "
                     f"at its epoch {lp.get('epoch')} (mean max p {mm:.4f}); "
                     "its test MSE is that of the argmax panel at that point.")
    lines.append("")
    for r in rows[:-1]:
        if r["converged"] and auth["converged"]:
            ratio = auth["wall_s"] / r["wall_s"]
            better = "lower or equal" if r["test_mse"] <= auth["test_mse"] else "HIGHER"
            lines.append(f"* {r['method']}: **{ratio:.1f}× faster** to a converged panel "
                         f"({auth['wall_s']:.0f} s / {r['wall_s']:.1f} s), test MSE {better} "
                         f"({r['test_mse']:.4f} vs {auth['test_mse']:.4f}).")
        elif r["converged"]:
            lines.append(f"* {r['method']}: converged in {r['wall_s']:.1f} s; the authors' "
                         f"package had not converged after {auth['wall_s']:.0f} s "
                         f"(≥ {auth['wall_s'] / r['wall_s']:.1f}×).")
        else:
            lines.append(f"* {r['method']}: did not converge within its cap "
                         f"({r['epochs']} epochs, {r['wall_s']:.1f} s).")
    total = time.perf_counter() - t_all
    lines.append(f"\nscanpy pbmc68k_reduced raw (log1p), {n} × {d}; split 72/8/20 "
                 f"(train {len(sp.train)}, val {len(sp.val)}, test {len(sp.test)}), seed "
                 f"{args.seed}, k={args.k}; whole run {total / 60:.1f} min.")
    report = "\n".join(lines)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"data": f"scanpy pbmc68k_reduced raw (log1p), {n} × {d}",
                  "split": sp.sizes(), "k": args.k, "seed": args.seed, "rows": rows,
                  "random_test_mse": rand_mse, "hvg_test_mse": mse["hvg"],
                  "hvg_method": hvg_method, "whole_run_s": total, "report": report}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors-python", default="/tmp/cae_venv/bin/python")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    p.add_argument("--converge", action="store_true",
                   help="time to a converged panel and its test error, both implementations")
    p.add_argument("--authors-epochs", type=int, default=300,
                   help="--converge: the package's num_epochs (its default 300)")
    p.add_argument("--authors-tries", type=int, default=5,
                   help="--converge: the package's tryout_limit (its default 5)")
    p.add_argument("--authors-timeout", type=float, default=1800.0,
                   help="--converge: seconds before the authors' run is cut off")
    p.add_argument("--no-fast", action="store_true",
                   help="--converge: only genepanel's run with the authors' settings")
    args = p.parse_args(argv)
    if args.converge:
        return converge(args)

    x = load_pbmc()
    tr, va, _ = split(len(x), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "data.npz"
        np.savez(npz, train=x[tr], val=x[va])
        script = Path(tmp) / "authors.py"
        script.write_text(AUTHORS_SCRIPT)
        t = time.perf_counter()
        proc = subprocess.run(
            [
                args.authors_python,
                str(script),
                str(npz),
                str(args.k),
                str(args.batch_size),
                str(args.epochs),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        authors_wall = time.perf_counter() - t
    line = next((s for s in proc.stdout.splitlines() if s.startswith("@@RESULT ")), None)
    if proc.returncode or line is None:
        print(proc.stdout[-2000:] + proc.stderr[-4000:], file=sys.stderr)
        print(f"the authors' package failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    authors = json.loads(line[len("@@RESULT ") :])["epoch_s"]
    t = time.perf_counter()
    ours = run_ours(x, tr, va, args)
    ours_wall = time.perf_counter() - t

    a_med, o_med = statistics.median(authors[1:]), statistics.median(ours[1:])
    result = {
        "data": f"scanpy pbmc68k_reduced raw (log1p), {x.shape[0]} × {x.shape[1]}",
        "train_rows": len(tr),
        "k": args.k,
        "batch": args.batch_size,
        "epochs": args.epochs,
        "authors_epoch_s": authors,
        "ours_epoch_s": ours,
        "authors_median_epoch_s": a_med,
        "ours_median_epoch_s": o_med,
        "speedup_per_epoch": a_med / o_med,
        "authors_wall_s": authors_wall,
        "ours_wall_s": ours_wall,
    }
    print(
        f"| implementation | s/epoch (median of epochs 2..{args.epochs}) | first epoch s |\n"
        f"|---|---|---|\n"
        f"| authors' concrete-autoencoder 0.0.1 (Keras/TF 2.15 CPU) | {a_med:.3f} | "
        f"{authors[0]:.2f} |\n"
        f"| genepanel (JAX, fit loop incl. per-epoch evaluation) | {o_med:.3f} | "
        f"{ours[0]:.2f} |\n\n"
        f"{result['data']}, train {len(tr)} rows, k={args.k}, batch {args.batch_size}: "
        f"genepanel is {a_med / o_med:.1f}× faster per epoch."
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
