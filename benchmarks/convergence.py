#!/usr/bin/env python
"""Speed of convergence of the concrete autoencoder: optimiser settings against the paper's.

The paper (Sec. 4) trains with Adam lr 1e-3, T0 = 10, TB = 0.01, until the mean over
the k nodes of the largest selection probability exceeds 0.99; the reference code
needs thousands of epochs for that. This script measures, on several data sets and
for several settings, whether training converges within its epoch cap, after how many
epochs and optimiser steps, how long it takes, and the test error of the panel it
picks: refit linear regression test MSE (the paper's score), the jointly trained
decoder's test MSE, and both against random panels (mean of 5) and highly variable
genes on the same split.

Every run goes through :func:`genepanel.api.select_panel` (the library path users
take), one process, the CPU backend unless JAX finds an accelerator. The optional
``--ipcae`` rows are a prototype of the indirect parametrisation of IP-CAE (Nilsson et
al., ICML 2024) written *inside this script* (its own small jitted loop, same split,
schedule, stopping rule and scores); it is not part of genepanel.

Settings (``E`` is both the epoch cap and the annealing length, as in genepanel):

* ``paper``: lr 1e-3, batch 256, E = 300 (genepanel's current defaults);
* ``paper-b32``: lr 1e-3, batch 32, E = 300;
* ``lr3e-3-b64``; ``lr1e-2-b32``; ``lr1e-2-b64``; ``lr1e-2-b256``: E = 300;
* ``lr1e-2-b64-T1``: as ``lr1e-2-b64`` with T0 = 1 (a shorter, cooler anneal);
* ``ipcae-*`` (``--ipcae``, first seed only): the IP-CAE prototype, steps view;
* ``steps-*``: the *steps* view: E is set from an annealing length in optimiser
  steps, ``E = ceil(S / steps_per_epoch)``, with batch ``min(256, max(16, n_train //
  16))``, so small data sets get as many updates as large ones.

Usage::

    python benchmarks/convergence.py --out benchmarks/convergence.md   # ≈ 20 min, 2 cores
    python benchmarks/convergence.py --quick                            # smoke run, < 1 min
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PBMC = Path("/tmp/genepanel_pbmc_example.h5ad")


def _table1():
    """Import benchmarks/table1.py (its loaders: NaN fill and min-max as the paper's)."""
    spec = importlib.util.spec_from_file_location("table1", ROOT / "benchmarks" / "table1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------- data sets


@dataclass
class DataSet:
    name: str
    label: str
    data: object  # genepanel.io.ExpressionData
    k: int
    note: str = ""


def _subsample(data, n: int, seed: int = 0):
    from genepanel.io import ExpressionData

    if data.shape[0] <= n:
        return data
    idx = np.sort(np.random.default_rng(seed).choice(data.shape[0], n, replace=False))
    return ExpressionData(X=np.asarray(data.X)[idx], genes=list(data.genes),
                          obs=data.obs.iloc[idx], source=data.source)


def load_sets(names: list[str], mnist_rows: int) -> list[DataSet]:
    from genepanel.api import load_input
    from genepanel.config import SelectConfig

    t1 = _table1()
    out = []
    for name in names:
        if name in ("mnist", "coil20", "mice", "fashion", "isolet"):
            data, k = t1.load(name, DATA)
            note = {"mice": "NaNs class-mean filled, per-feature min-max (table1.py)",
                    "coil20": "global min-max (table1.py)"}.get(name, "")
            if name in ("mnist", "fashion"):
                n0 = data.shape[0]
                data = _subsample(data, mnist_rows)
                note = f"{data.shape[0]} of {n0} rows (rng seed 0), global min-max"
            out.append(DataSet(name, t1.NAMES[name], data, k, note))
        elif name == "pbmc":
            if not PBMC.is_file():
                subprocess.run([sys.executable, str(ROOT / "examples" / "make_pbmc_example.py"),
                                str(PBMC)], check=True, capture_output=True)
            data = load_input(PBMC, SelectConfig())
            out.append(DataSet(name, "PBMC (scanpy pbmc68k_reduced, .raw)", data, 50,
                               "log1p as shipped"))
        elif name == "flu":
            path = DATA / "bulk_flu_gse30550_n252x4147.h5ad"
            data = load_input(path, SelectConfig())
            out.append(DataSet(name, "Flu bulk GSE30550", data, 20, "log2 as shipped"))
        else:
            msg = f"unknown data set {name!r}"
            raise SystemExit(msg)
    return out


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    name: str
    lr: float
    batch: int | None  # None: min(256, max(16, n_train // 16))
    epochs: int | None = 300  # None: from ``steps``
    steps: int | None = None
    t0: float = 10.0
    tb: float = 0.01
    model: str = "cae"  # or "ipcae" (prototype in this script)


SETTINGS = {
    s.name: s
    for s in [
        Setting("paper", 1e-3, 256),
        Setting("paper-b32", 1e-3, 32),
        Setting("lr3e-3-b64", 3e-3, 64),
        Setting("lr1e-2-b32", 1e-2, 32),
        Setting("lr1e-2-b64", 1e-2, 64),
        Setting("lr1e-2-b256", 1e-2, 256),
        Setting("lr1e-2-b64-T1", 1e-2, 64, t0=1.0),
        Setting("steps-lr1e-3-S20k", 1e-3, None, None, 20_000),
        Setting("steps-lr1e-2-S5k", 1e-2, None, None, 5_000),
        Setting("steps-lr1e-2-S10k", 1e-2, None, None, 10_000),
        Setting("steps-lr1e-2-S20k", 1e-2, None, None, 20_000),
        Setting("ipcae-lr1e-3-S20k", 1e-3, None, None, 20_000, model="ipcae"),
        Setting("ipcae-lr1e-2-S10k", 1e-2, None, None, 10_000, model="ipcae"),
    ]
}
DEFAULT_SETTINGS = [n for n in SETTINGS if not n.startswith("ipcae") and n != "steps-lr1e-2-S5k"]
QUICK_SETTINGS = ["paper", "lr1e-2-b64", "steps-lr1e-2-S5k"]


def auto_batch(n_train: int) -> int:
    """The batch rule tried in the steps view: ``min(256, max(16, n_train // 16))``."""
    return min(256, max(16, n_train // 16))


def resolve(setting: Setting, n_train: int, cap_scale: float = 1.0) -> tuple[int, int, int]:
    """(effective batch, steps per epoch, epoch cap E) of ``setting`` for ``n_train`` rows."""
    from genepanel.train import effective_batch_size

    b = setting.batch if setting.batch is not None else auto_batch(n_train)
    b = effective_batch_size(b, n_train, 1)
    spe = n_train // b
    if setting.epochs is not None:
        cap = max(2, round(setting.epochs * cap_scale))
    else:
        cap = max(2, math.ceil(setting.steps * cap_scale / spe))
    return b, spe, cap


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    data: str
    setting: str
    seed: int
    batch: int
    spe: int
    cap: int
    converged: bool
    epochs: int
    steps: int
    train_s: float
    refit_mse: float
    decoder_mse: float
    final_mmp: float
    extra: dict = field(default_factory=dict)


def run_cae(ds: DataSet, s: Setting, seed: int, cap_scale: float, *,
            baselines: bool) -> tuple[Run, dict]:
    from genepanel.api import select_panel
    from genepanel.config import SelectConfig
    from genepanel.data import make_split

    cfg0 = SelectConfig(k=ds.k, seed=seed)
    n_train = len(make_split(ds.data.shape[0], cfg0.split, seed, ds.data.obs).train)
    b, spe, cap = resolve(s, n_train, cap_scale)
    cfg = cfg0.replace(**{"train.learning_rate": s.lr, "train.batch_size": b,
                          "train.max_epochs": cap, "train.t0": s.t0, "train.tb": s.tb,
                          "train.checkpoint_every": 0})
    res = select_panel(ds.data, cfg, evaluate_baselines=baselines)
    f = res.fit
    assert f.steps_per_epoch == spe and f.batch_size == b, (f.steps_per_epoch, spe)
    run = Run(ds.name, s.name, seed, b, spe, cap, f.converged, f.epochs_run,
              f.epochs_run * spe, res.timings["train"], res.metrics["linear_refit_test_mse"],
              res.metrics["trained_decoder_test_mse"], f.history[-1]["mean_max_prob"])
    base = {}
    if baselines:
        base = {"random": res.metrics["random_panel_test_mse"]["mean"],
                "hvg": res.metrics["hvg_panel_test_mse"],
                "pca": res.metrics["pca_bound_test_mse"],
                "variance": res.metrics["test_variance"], "n_train": n_train}
    return run, base


def run_ipcae(ds: DataSet, s: Setting, seed: int, cap_scale: float,
              dim_ip: int = 256) -> Run:
    """IP-CAE prototype: selector logits ``L = ψ W + b`` (ψ ``[k, h]``, W ``[h, d]``).

    Same split, preprocessing (none), Adam, one Gumbel draw per minibatch, per-epoch
    exponential temperature, stopping rule (mean row-max of ``softmax(L)`` > 0.99) and
    scores as genepanel; no collision resolution during training (logits are not free
    parameters), distinct genes at extraction as genepanel does. ``h = min(d, dim_ip)``.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from genepanel.config import SelectConfig
    from genepanel.data import Preprocessor, make_split
    from genepanel.evaluate import fit_linear, linear_test_mse
    from genepanel.panel import extract_panel
    from genepanel.train import temperature

    data, k = ds.data, ds.k
    cfg = SelectConfig(k=k, seed=seed)
    n, d = data.shape
    split = make_split(n, cfg.split, seed, data.obs)
    pre = Preprocessor(kind="none").fit(data, split.train)
    xtr = jnp.asarray(pre.transform(data.rows(split.train)), jnp.float32)
    xte = pre.transform(data.rows(split.test)).astype(np.float32)
    b, spe, cap = resolve(s, len(split.train), cap_scale)
    h = min(d, dim_ip)

    key = jax.random.key(seed)
    k1, k2, k3 = jax.random.split(key, 3)
    params = {
        "psi": jax.random.normal(k1, (k, h)),
        # torch nn.Linear's default init, as the IP-CAE code uses
        "w": jax.random.uniform(k2, (h, d), minval=-1, maxval=1) / math.sqrt(h),
        "b": jnp.zeros((d,)),
        "dec_w": jax.random.normal(k3, (k, d)) / math.sqrt(k),
        "dec_b": jnp.zeros((d,)),
    }
    tx = optax.adam(s.lr)
    opt = tx.init(params)

    def logits_of(p):
        return p["psi"] @ p["w"] + p["b"]

    def loss(p, xb, temp, key):
        lg = logits_of(p)
        g = jax.random.gumbel(key, lg.shape)
        m = jax.nn.softmax((lg + g) / temp, axis=-1)
        recon = (xb @ m.T) @ p["dec_w"] + p["dec_b"]
        return jnp.mean(jnp.square(recon - xb))

    @jax.jit
    def epoch(p, o, step0, perm, temp):
        def body(carry, idx):
            p, o, step = carry
            kk = jax.random.fold_in(jax.random.key(seed), step)
            val, g = jax.value_and_grad(loss)(p, xtr[idx], temp, kk)
            upd, o = tx.update(g, o, p)
            return (optax.apply_updates(p, upd), o, step + 1), val

        (p, o, step), _ = jax.lax.scan(body, (p, o, step0), perm)
        mmp = jnp.mean(jnp.max(jax.nn.softmax(logits_of(p), axis=-1), axis=-1))
        return p, o, step, mmp

    t0 = time.perf_counter()
    step = jnp.int32(0)
    converged, ep, mmp = False, 0, 0.0
    while ep < cap:
        temp = jnp.float32(temperature(ep, s.t0, s.tb, cap))
        perm = np.random.default_rng([seed, 0, ep]).permutation(len(split.train))
        perm = perm[: spe * b].reshape(spe, b).astype(np.int32)
        params, opt, step, mmp = epoch(params, opt, step, perm, temp)
        ep += 1
        mmp = float(mmp)
        if mmp > 0.99:
            converged = True
            break
    train_s = time.perf_counter() - t0
    lg = np.asarray(logits_of(params))
    panel = extract_panel(lg)
    fits = fit_linear(data, pre, split.train, {"p": panel.indices})
    refit = linear_test_mse(data, pre, split.test, fits)["p"]
    dec = xte[:, panel.indices] @ np.asarray(params["dec_w"]) + np.asarray(params["dec_b"])
    dec_mse = float(np.mean(np.square(dec - xte)))
    return Run(ds.name, s.name, seed, b, spe, cap, converged, ep, ep * spe, train_s, refit,
               dec_mse, mmp, {"dim_ip": h})


# --------------------------------------------------------------------------- report


def _f(v: float, digits: int = 4) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def summarise(runs: list[Run], base: dict[tuple[str, int], dict]) -> list[dict]:
    """One row per (data set, setting), seeds pooled."""
    rows = []
    keys = list(dict.fromkeys((r.data, r.setting) for r in runs))
    for dname, sname in keys:
        rs = [r for r in runs if r.data == dname and r.setting == sname]
        rel_r = [r.refit_mse / base[(dname, r.seed)]["random"] for r in rs]
        rel_h = [r.refit_mse / base[(dname, r.seed)]["hvg"] for r in rs]
        rows.append({
            "data": dname, "setting": sname, "batch": rs[0].batch, "spe": rs[0].spe,
            "cap": rs[0].cap, "n_conv": sum(r.converged for r in rs), "n": len(rs),
            "epochs": [r.epochs if r.converged else None for r in rs],
            "steps": [r.steps if r.converged else None for r in rs],
            "train_s": float(np.mean([r.train_s for r in rs])),
            "refit": float(np.mean([r.refit_mse for r in rs])),
            "refit_sd": float(np.std([r.refit_mse for r in rs])),
            "decoder": float(np.mean([r.decoder_mse for r in rs])),
            "rel_random": float(np.mean(rel_r)), "rel_hvg": float(np.mean(rel_h)),
            "mmp": float(np.mean([r.final_mmp for r in rs])),
        })
    return rows


def _list(vals: list[int | None]) -> str:
    return "/".join("—" if v is None else str(v) for v in vals)


def render_table(rows: list[dict]) -> list[str]:
    lines = [
        "| data | setting | batch | steps/ep | cap E | conv. | epochs to conv. | steps to conv. "
        "| train s | refit MSE | decoder MSE | ÷ random | ÷ HVG | final mean max p |",
        "|---|---|--:|--:|--:|:-:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['data']} | {r['setting']} | {r['batch']} | {r['spe']} | {r['cap']} "
            f"| {r['n_conv']}/{r['n']} | {_list(r['epochs'])} | {_list(r['steps'])} "
            f"| {r['train_s']:.1f} | {_f(r['refit'])} ± {_f(r['refit_sd'])} "
            f"| {_f(r['decoder'])} | {r['rel_random']:.3f} | {r['rel_hvg']:.3f} "
            f"| {r['mmp']:.3f} |")
    return lines


def render_overall(rows: list[dict]) -> list[str]:
    """Per setting, over data sets: convergence, error relative to the best setting, time."""
    best = {}
    for r in rows:
        best[r["data"]] = min(best.get(r["data"], np.inf), r["refit"])
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    lines = ["| setting | converged runs | refit MSE ÷ best setting (geo. mean over sets) "
             "| worst set | mean ÷ random | total train s |",
             "|---|:-:|--:|--:|--:|--:|"]
    for s in settings:
        rs = [r for r in rows if r["setting"] == s]
        rel = np.array([r["refit"] / best[r["data"]] for r in rs])
        lines.append(
            f"| {s} | {sum(r['n_conv'] for r in rs)}/{sum(r['n'] for r in rs)} "
            f"| {float(np.exp(np.mean(np.log(rel)))):.3f} | {rel.max():.3f} "
            f"| {np.mean([r['rel_random'] for r in rs]):.3f} "
            f"| {sum(r['train_s'] * r['n'] for r in rs):.0f} |")
    return lines


def render(sets: list[DataSet], rows: list[dict], base: dict, args, total: float) -> str:
    import jax

    import genepanel

    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        "# Convergence of the concrete autoencoder: optimiser settings", "",
        f"Run {now}, {platform.node() or 'host'} ({platform.machine()}, {os.cpu_count()} "
        f"CPU cores visible, shared with other jobs; JAX {jax.__version__} on "
        f"{jax.default_backend()}), genepanel {genepanel.__version__}, seeds "
        f"{', '.join(map(str, args.seeds))}, whole run {total / 60:.1f} min. "
        f"`python benchmarks/convergence.py {' '.join(args.argv)}`.", "",
        "## Data sets", "",
        "| data | (n, d) | k | n_train | preprocessing | random MSE | HVG MSE | PCA bound "
        "| test variance |", "|---|---|--:|--:|---|--:|--:|--:|--:|"]
    for ds in sets:
        b = base[(ds.name, args.seeds[0])]
        lines.append(
            f"| {ds.name}: {ds.label} | {ds.data.shape} | {ds.k} | {b['n_train']} | {ds.note} "
            f"| {_f(b['random'])} | {_f(b['hvg'])} | {_f(b['pca'])} | {_f(b['variance'])} |")
    lines += ["", f"Baselines shown for seed {args.seeds[0]}; ratios below use each seed's "
              "own split and baselines.", "", "## Per data set and setting", "",
              "Epochs/steps to convergence per seed (— = not converged within the cap); "
              "train s = mean wall time of `fit` per run, JIT compilation included; MSEs "
              "are means over seeds (± sd); ÷ random and ÷ HVG are the refit MSE over "
              "that baseline's (below 1 is better than the baseline).", ""]
    lines += render_table(rows)
    lines += ["", "## Per setting, over all data sets", ""]
    lines += render_overall(rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="mnist,pbmc,flu,mice,coil20")
    ap.add_argument("--settings", default=",".join(DEFAULT_SETTINGS),
                    help=f"comma list from: {', '.join(SETTINGS)}")
    ap.add_argument("--ipcae", action="store_true", help="add the IP-CAE prototype rows")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--mnist-rows", type=int, default=3000)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: mice + flu, 3 settings, 1 seed, caps ÷ 10")
    ap.add_argument("--out", type=Path, help="write the Markdown report here")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    cap_scale = 1.0
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    if args.ipcae:
        settings += [n for n in SETTINGS if n.startswith("ipcae") and n not in settings]
    if args.quick:
        args.sets, args.seeds, cap_scale = "mice,flu", "0", 0.1
        settings = QUICK_SETTINGS + (["ipcae-lr1e-2-S10k"] if args.ipcae else [])
    args.seeds = [int(s) for s in str(args.seeds).split(",")]
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        print(f"error: unknown setting(s) {', '.join(unknown)}", file=sys.stderr)
        return 2

    t_all = time.perf_counter()
    sets = load_sets([s.strip() for s in args.sets.split(",") if s.strip()], args.mnist_rows)
    runs: list[Run] = []
    base: dict[tuple[str, int], dict] = {}
    for ds in sets:
        for seed in args.seeds:
            for sname in settings:
                s = SETTINGS[sname]
                if s.model == "ipcae" and seed != args.seeds[0]:
                    continue  # the prototype runs on the first seed only (time budget)
                if s.model == "ipcae":
                    run = run_ipcae(ds, s, seed, cap_scale)
                else:
                    run, b = run_cae(ds, s, seed, cap_scale, baselines=(ds.name, seed) not in base)
                    if b:
                        base[(ds.name, seed)] = b
                runs.append(run)
                print(f"[{time.perf_counter() - t_all:6.0f}s] {ds.name:7s} seed {seed} "
                      f"{sname:20s} b={run.batch:<4d} E={run.cap:<5d} "
                      f"{'conv' if run.converged else 'NOT '} ep={run.epochs:<5d} "
                      f"steps={run.steps:<6d} {run.train_s:6.1f}s refit={run.refit_mse:.5f} "
                      f"dec={run.decoder_mse:.5f} mmp={run.final_mmp:.3f}",
                      file=sys.stderr, flush=True)
        if args.out is not None:  # partial report after each data set
            done = sets[: sets.index(ds) + 1]
            args.out.write_text(render(done, summarise(runs, base), base, args,
                                       time.perf_counter() - t_all))
    rows = summarise(runs, base)
    text = render(sets, rows, base, args, time.perf_counter() - t_all)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
