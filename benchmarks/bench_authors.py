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
compared here; time to a converged panel is not (the authors' package needed about
13 minutes on this machine for it).
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--authors-python", default="/tmp/cae_venv/bin/python")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = p.parse_args(argv)

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
