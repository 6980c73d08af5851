#!/usr/bin/env python
"""Speed of the concrete-autoencoder train step against this machine's matmul rate.

For each shape (``small``: sklearn digits 1797 × 64, k = 10; ``medium``: 20,000 × 2,000
synthetic low-rank, k = 50; ``l1000``: 112,171 × 10,463 synthetic low-rank, k = 943) it
reports, for the fast path (``Trainer.epoch_fn``: the epoch as one ``lax.scan`` over
minibatches gathered on the device) and the streamed path (``Trainer.step_fn`` fed
host minibatches by ``RowSource`` and the prefetch thread, as ``fit`` does):

* steps/s and samples/s (compilation excluded; best of ``--repeats`` interleaved rounds,
  since other jobs on a shared machine only ever add time; medians are in the JSON);
* the achieved matmul FLOP rate of the train step. Count per step, linear decoder,
  batch ``b``: selector forward ``x[b,d] @ Mᵀ`` 2bdk, its backward needs only
  ``∂M = ∂uᵀ x`` 2bdk (no gradient flows to the data, so ``∂x`` is never computed);
  decoder forward 2bkd, backward ``∂W`` 2bkd and ``∂u`` 2bkd: **10·b·d·k** in all
  (an MLP decoder adds 6·b·in·out per layer). XLA's own count (``cost_analysis``) is
  printed beside it as a check;
* this machine's float32 matmul rate, measured in the same run and interleaved with the
  step timings: the step's five matmuls alone, same shapes and operand layouts, jitted
  (the reference for the fraction), and ``jnp.dot`` on a square ``n³`` problem (a
  peak-like figure);
* the fraction of that rate reached, and the peak resident memory of the process (each
  shape runs in its own subprocess, so the figure is per shape).

``--ablations`` adds, on the L1000 shape, the attribution of the step time measured in
one run: Gumbel noise through ``jax.random.gumbel`` (threefry, rolled loop) against the
fused threefry kernel now used, ``rbg``/``unsafe_rbg`` keys, no noise, no softmax, SGD
instead of Adam, a Python loop of ``step_fn`` calls with device-resident or host batches,
recompilations and page faults per step.

Examples::

    .venv/bin/python benchmarks/bench_speed.py --quick
    .venv/bin/python benchmarks/bench_speed.py --ablations --out benchmarks/results/cpu.json
    .venv/bin/python benchmarks/bench_speed.py --platform gpu --l1000-rows 0 --out gpu.md
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

L1000_ROWS, L1000_GENES, L1000_K = 112_171, 10_463, 943
SHAPES = {
    "small": {"k": 10},
    "medium": {"n": 20_000, "d": 2_000, "k": 50, "rank": 20},
    "l1000": {"n": L1000_ROWS, "d": L1000_GENES, "k": L1000_K, "rank": 40},
}


# --------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="small,medium,l1000", help="comma-separated subset")
    p.add_argument("--batch-size", type=int, default=256, help="global batch (default 256)")
    p.add_argument("--steps", type=int, default=None, help="steps per timed epoch (cap)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement")
    p.add_argument(
        "--l1000-rows",
        type=int,
        default=None,
        help="rows of the L1000-shaped matrix (d and k stay full); 0 = all 112,171. "
        "Default 4096 on CPU, all rows elsewhere",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: few rows, steps, rounds")
    p.add_argument("--ablations", action="store_true", help="attribute the L1000 step time")
    p.add_argument("--no-streamed", action="store_true", help="skip the streamed path")
    p.add_argument("--platform", default=None, help="JAX platform: cpu, gpu/cuda (default: JAX's)")
    p.add_argument("--out", type=Path, default=None, help="write results (.json or .md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- data


def make_data(shape: str, args: argparse.Namespace, on_cpu: bool) -> tuple[Any, int, str]:
    """``(X float32 [n, d], k, description)`` for one named shape."""
    import numpy as np

    spec = SHAPES[shape]
    rng = np.random.default_rng(args.seed)
    if shape == "small":
        from sklearn.datasets import load_digits

        x = load_digits().data.astype(np.float32)
        sd = x.std(0)
        x = (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)
        return x.astype(np.float32), spec["k"], "sklearn digits 1797 × 64, z-scored"
    n, d, rank = spec["n"], spec["d"], spec["rank"]
    note = ""
    if shape == "l1000":
        rows = args.l1000_rows
        if rows is None:
            rows = 4096 if on_cpu else 0
        if args.quick:
            rows = min(rows or n, 1024)
        if rows and rows < n:
            note = f"; rows subsampled to {rows:,} of {n:,} (d and k full)"
            n = rows
    elif args.quick:
        n = min(n, 4096)
        note = f"; rows cut to {n:,} (--quick)"
    x = np.empty((n, d), np.float32)
    w = rng.standard_normal((rank, d), dtype=np.float32) / np.float32(np.sqrt(rank))
    for i in range(0, n, 8192):
        m = min(8192, n - i)
        z = rng.standard_normal((m, rank), dtype=np.float32)
        x[i : i + m] = z @ w + np.float32(0.3) * rng.standard_normal((m, d), dtype=np.float32)
    return x, spec["k"], f"synthetic rank-{rank} + noise, {n:,} × {d:,}{note}"


# --------------------------------------------------------------------------- timing helpers


def _block(tree: Any) -> None:
    import jax

    jax.block_until_ready(tree)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _minflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def matmul_probes(b: int, d: int, k: int, square: int) -> dict[str, Any]:
    """Jitted ``jnp.dot``-family probes: the five matmuls of the step alone, and a square one.

    The step-shape probe computes the step's five products with the same operand
    layouts (selector ``x·Mᵀ``, decoder ``u·W``, ``∂W = uᵀ·g``, ``∂u = g·Wᵀ``,
    ``∂M = ∂uᵀ·x``) over ``reps`` distinct input stacks in one ``lax.scan``, so small
    shapes are not timed as Python dispatch; ``reps`` makes about 2 GFLOP per call. Each
    product is reduced to one element, so the probe is matmul work only.
    """
    import jax
    import jax.numpy as jnp

    step_flops = 10.0 * b * d * k
    reps = int(max(1, min(256, 2e9 // step_flops)))
    keys = jax.random.split(jax.random.key(7), 6)
    xs = jax.random.normal(keys[0], (reps, b, d), jnp.float32)
    gs = jax.random.normal(keys[1], (reps, b, d), jnp.float32)
    ms = jax.random.normal(keys[2], (reps, k, d), jnp.float32)
    ws = jax.random.normal(keys[3], (reps, k, d), jnp.float32)
    us = jax.random.normal(keys[4], (reps, b, k), jnp.float32)
    sq = jax.random.normal(keys[5], (square, square), jnp.float32)

    @jax.jit
    def five(xs: Any, gs: Any, ms: Any, ws: Any, us: Any) -> Any:
        def body(c: Any, ops: Any) -> tuple[Any, None]:
            x, g, m, w, u = ops
            outs = (
                jnp.einsum("bd,kd->bk", x, m),  # selector forward
                u @ w,  # decoder forward
                jnp.einsum("bk,bd->kd", u, g),  # ∂W
                jnp.einsum("bd,kd->bk", g, w),  # ∂u
                jnp.einsum("bk,bd->kd", u, x),  # ∂M
            )
            return c + sum(o[0, 0] for o in outs), None

        return jax.lax.scan(body, jnp.float32(0), (xs, gs, ms, ws, us))[0]

    sq_dot = jax.jit(jnp.dot)
    _block(five(xs, gs, ms, ws, us))
    _block(sq_dot(sq, sq))

    def step_shapes() -> float:
        t = time.perf_counter()
        _block(five(xs, gs, ms, ws, us))
        return time.perf_counter() - t

    def square_once() -> float:
        t = time.perf_counter()
        _block(sq_dot(sq, sq))
        return time.perf_counter() - t

    return {
        "step_flops": step_flops * reps,
        "square_flops": 2.0 * square**3,
        "step_shapes": step_shapes,
        "square_once": square_once,
    }


def train_flops(b: int, d: int, k: int, hidden: tuple[int, ...] = ()) -> float:
    """Matmul FLOPs of one train step (forward + backward), see the module docstring."""
    widths = [k, *hidden, d]
    dec = sum(6.0 * b * i * o for i, o in itertools.pairwise(widths))
    return 4.0 * b * d * k + dec


# --------------------------------------------------------------------------- one shape


def run_shape(shape: str, args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import numpy as np

    from genepanel.config import TrainConfig
    from genepanel.data import Preprocessor
    from genepanel.io import ExpressionData
    from genepanel.runtime import data_mesh, replicated
    from genepanel.train import RowSource, Trainer

    try:
        from genepanel.train import _prefetch
    except ImportError:  # pragma: no cover - the fit loop changed; fall back to no thread

        def _prefetch(it: Any) -> Any:
            return it

    dev = jax.devices()[0]
    on_cpu = dev.platform == "cpu"
    x, k, desc = make_data(shape, args, on_cpu)
    n, d = x.shape
    b = min(args.batch_size, n)
    max_steps = args.steps or (4 if args.quick else (8 if shape == "l1000" and on_cpu else 50))
    steps = max(1, min(n // b, max_steps))
    repeats = args.repeats or (2 if args.quick else 5)
    mesh = data_mesh()
    rep = replicated(mesh)
    trainer = Trainer(k, d, (), TrainConfig(batch_size=b), args.seed, mesh)
    rng = np.random.default_rng(args.seed)

    def perm() -> np.ndarray:
        return rng.permutation(n)[: steps * b].reshape(steps, b).astype(np.int32)

    temps = [np.float32(t) for t in np.geomspace(10.0, 0.01, repeats + 1)]
    square = 1024 if shape == "small" and on_cpu else 2048 if on_cpu else 8192
    probes = matmul_probes(b, d, k, square)
    flops_step = train_flops(b, d, k)
    state = trainer.init_state()
    xla_flops = _xla_flops(trainer, state, x[:b], temps[0])

    # fast path: X on the device, one lax.scan per epoch
    t = time.perf_counter()
    x_dev = jax.device_put(x, rep)
    _block(x_dev)
    h2d_s = time.perf_counter() - t
    t = time.perf_counter()
    state, loss = trainer.epoch_fn(state, x_dev, perm(), temps[0])
    _block(loss)
    first_epoch_s = time.perf_counter() - t

    src = RowSource(
        ExpressionData(x, [f"g{i}" for i in range(d)], _empty_obs(n), "benchmark"),
        Preprocessor("none"),
        np.arange(n),
        materialize=False,
    )
    s_state = None
    if not args.no_streamed:
        s_state = trainer.init_state()
        for xb in _prefetch(src.batch(p) for p in perm()[:1]):
            s_state, s_loss = trainer.step_fn(s_state, xb, temps[0])
        _block(s_loss)

    fast, streamed, mm_step, mm_square = [], [], [], []
    for r in range(repeats):
        mm_step.append(probes["step_shapes"]())
        mm_square.append(probes["square_once"]())
        p = perm()
        t = time.perf_counter()
        state, loss = trainer.epoch_fn(state, x_dev, p, temps[r + 1])
        _block(loss)
        fast.append((time.perf_counter() - t) / steps)
        if s_state is not None:
            t = time.perf_counter()
            for xb in _prefetch(src.batch(q) for q in p):
                s_state, s_loss = trainer.step_fn(s_state, xb, temps[r + 1])
            _block(s_loss)
            streamed.append((time.perf_counter() - t) / steps)

    # Best of the interleaved rounds for every figure: other jobs share this machine's
    # cores, and their interference only ever adds time.
    mm_rate = probes["step_flops"] / min(mm_step)
    sq_rate = probes["square_flops"] / min(mm_square)
    out: dict[str, Any] = {
        "shape": shape,
        "data": desc,
        "n": n,
        "d": d,
        "k": k,
        "batch": b,
        "steps_per_epoch_timed": steps,
        "repeats": repeats,
        "matmul_flops_per_step": flops_step,
        "xla_flops_per_step": xla_flops,
        "matmul_rate_step_shapes_gflops": mm_rate / 1e9,
        "matmul_rate_square_gflops": sq_rate / 1e9,
        "square_n": square,
        "first_epoch_with_compile_s": first_epoch_s,
        "x_to_device_s": h2d_s,
        "compilations": {
            "epoch_fn": trainer.epoch_fn._cache_size(),
            "step_fn": trainer.step_fn._cache_size(),
        },
    }
    for name, times in (("fast", fast), ("streamed", streamed)):
        if not times:
            continue
        sec = min(times)
        out[name] = {
            "s_per_step": sec,
            "s_per_step_median": _median(times),
            "s_per_step_all": times,
            "steps_per_s": 1.0 / sec,
            "samples_per_s": b / sec,
            "gflops": flops_step / sec / 1e9,
            "fraction_of_matmul_rate": flops_step / sec / mm_rate,
            "fraction_of_square_rate": flops_step / sec / sq_rate,
        }
    if args.ablations and shape == "l1000":
        out["ablations"] = ablations(
            trainer, x_dev, x, perm, temps, args, b, steps, repeats, probes
        )
    out["peak_rss_mb"] = _maxrss_mb()
    out["device"] = device_info()
    stats = getattr(dev, "memory_stats", lambda: None)() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
    return out


def _empty_obs(n: int) -> Any:
    import pandas as pd

    return pd.DataFrame(index=[str(i) for i in range(n)])


def _xla_flops(trainer: Any, state: Any, xb: Any, temp: Any) -> float | None:
    """XLA's FLOP count for one ``step_fn`` call (None when the backend gives none)."""
    try:
        cost = trainer.step_fn.lower(state, xb, temp).cost_analysis()
    except Exception:  # a diagnostic only
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    return float(cost["flops"]) if cost and "flops" in cost else None


# --------------------------------------------------------------------------- ablations


def ablations(
    trainer: Any,
    x_dev: Any,
    x: Any,
    perm: Any,
    temps: list,
    args: Any,
    b: int,
    steps: int,
    repeats: int,
    probes: dict[str, Any],
) -> list[dict[str, Any]]:
    """Time variants of the L1000 step in one interleaved run; ratios to the current step."""
    import jax
    import jax.numpy as jnp
    import optax

    from genepanel.model import ConcreteAutoencoder
    from genepanel.train import Trainer, reconstruction_loss

    k, d, cfg, mesh = trainer.k, trainer.d, trainer.cfg, trainer.mesh
    rep = trainer._rep

    def no_noise(params, xb, temp, key):
        """Same model without the Gumbel draw: bounds what noise generation can cost."""
        w = jax.nn.softmax(params["selector"]["logits"] / temp, axis=-1)
        return rest(params, xb, w)

    def no_softmax(params, xb, temp, key):
        """Linear selector ``u = x Lᵀ``: the step's matmuls and Adam only."""
        return rest(params, xb, params["selector"]["logits"])

    def rest(params, xb, w):
        u = jnp.einsum("bd,kd->bk", xb, w)
        dec = params["decoder"]["out"]
        return jnp.mean(jnp.square(u @ dec["kernel"] + dec["bias"] - xb))

    def key_of(impl: str) -> Any:
        return jax.device_put(jax.random.key(args.seed, impl=impl), rep)

    def make(loss: Any = None, noise: str = "fused", sgd: bool = False) -> Any:
        # The static pieces of a Trainer, swapped and bound again to the pure step functions.
        tr = Trainer(k, d, (), cfg, args.seed, mesh)
        tr.model = ConcreteAutoencoder(k, d, (), noise=noise)
        if sgd:
            tr.tx = optax.sgd(cfg.learning_rate)
        tr.loss_fn = loss or functools.partial(reconstruction_loss, model=tr.model, n_genes=d)
        tr._compile()
        return tr

    cur = make()
    # One trainer per variant, so each compiles once and "compiles" reads 1 (a key of
    # another impl, or a host batch with another sharding, is a new executable).
    variants = [  # (label, trainer, key impl, mode)
        ("current: fused threefry noise, lax.scan epoch", cur, "threefry2x32", "scan"),
        (
            "before: jax.random.gumbel (threefry, rolled loop)",
            make(noise="jax"),
            "threefry2x32",
            "scan",
        ),
        ("jax.random.gumbel with an rbg key", make(), "rbg", "scan"),
        ("jax.random.gumbel with an unsafe_rbg key", make(), "unsafe_rbg", "scan"),
        ("bound: no Gumbel noise", make(no_noise), "threefry2x32", "scan"),
        ("bound: no noise, no softmax (matmuls + Adam)", make(no_softmax), "threefry2x32",
         "scan"),
        ("bound: SGD instead of Adam", make(sgd=True), "threefry2x32", "scan"),
        ("Python loop of step_fn, batches on device", make(), "threefry2x32", "steps-device"),
        ("Python loop of step_fn, host batches (H2D)", make(), "threefry2x32", "steps-host"),
    ]
    states = {id(tr): None for _, tr, _, _ in variants}

    if jax.devices()[0].platform == "cpu":
        steps = min(steps, 4)  # nine variants: keep the run to a few minutes on two cores

    def run(tr: Any, impl: str, mode: str, temp: Any) -> tuple[float, int]:
        st = states[id(tr)]
        if st is None:  # the noise stream in a key of the variant's impl (its own copy:
            st = tr.init_state()  # the steps donate the state)
            st = st.replace(keys=st.keys.replace(noise=key_of(impl)))
        p = perm()[:steps]
        f0 = _minflt()
        t = time.perf_counter()
        if mode == "scan":
            st, loss = tr.epoch_fn(st, x_dev, p, temp)
        elif mode == "steps-device":
            for q in p:
                st, loss = tr.step_fn(st, x_dev[q], temp)
        else:
            for q in p:
                st, loss = tr.step_fn(st, x[q], temp)
        _block(loss)
        dt = (time.perf_counter() - t) / steps
        states[id(tr)] = st
        return dt, (_minflt() - f0) // steps

    for _, tr, impl, mode in variants:  # compile and warm up
        run(tr, impl, mode, temps[0])
    times: list[list[float]] = [[] for _ in variants]
    faults: list[list[int]] = [[] for _ in variants]
    flops = train_flops(b, d, k)
    matmul_only = []  # the step's five matmuls alone, in the same rounds
    for r in range(repeats):
        matmul_only.append(probes["step_shapes"]() * flops / probes["step_flops"])
        for i, (_, tr, impl, mode) in enumerate(variants):
            dt, fl = run(tr, impl, mode, temps[r + 1])
            times[i].append(dt)
            faults[i].append(fl)
    base = min(times[0])
    rows = [
        {
            "variant": "reference: the step's five matmuls alone (jitted, same shapes)",
            "s_per_step": min(matmul_only),
            "s_per_step_median": _median(matmul_only),
            "ratio_to_current": min(matmul_only) / base,
            "gflops": flops / min(matmul_only) / 1e9,
            "page_faults_per_step": None,
            "compilations": 1,
            "key_impl": "",
            "mode": "probe",
        }
    ]
    for i, (label, tr, impl, mode) in enumerate(variants):
        sec = min(times[i])
        fn = tr.epoch_fn if mode == "scan" else tr.step_fn
        rows.append(
            {
                "variant": label,
                "s_per_step": sec,
                "s_per_step_median": _median(times[i]),
                "ratio_to_current": sec / base,
                "gflops": flops / sec / 1e9,
                "page_faults_per_step": int(_median([float(f) for f in faults[i]])),
                "compilations": fn._cache_size(),
                "key_impl": impl,
                "mode": mode,
            }
        )
    return rows


# --------------------------------------------------------------------------- report


def device_info() -> dict[str, Any]:
    import jax

    devs = jax.devices()
    info = {
        "platform": devs[0].platform,
        "device_kind": devs[0].device_kind,
        "n_devices": len(devs),
        "jax": jax.__version__,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.platform(),
    }
    try:
        import flax
        import optax

        info["flax"], info["optax"] = flax.__version__, optax.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def fmt_table(results: list[dict[str, Any]]) -> str:
    head = (
        "| shape | n × d, k | batch | path | steps/s | samples/s | GFLOP/s | "
        "matmul rate (step shapes) | fraction | square-matmul fraction | peak RSS |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for path in ("fast", "streamed"):
            if path not in r:
                continue
            m = r[path]
            lines.append(
                f"| {r['shape']} | {r['n']:,} × {r['d']:,}, k={r['k']} | {r['batch']} | "
                f"{'epoch_fn (scan)' if path == 'fast' else 'step_fn (streamed)'} | "
                f"{m['steps_per_s']:.2f} | {m['samples_per_s']:,.0f} | {m['gflops']:.1f} | "
                f"{r['matmul_rate_step_shapes_gflops']:.1f} GFLOP/s | "
                f"{m['fraction_of_matmul_rate']:.0%} | {m['fraction_of_square_rate']:.0%} | "
                f"{r['peak_rss_mb']:,.0f} MB |"
            )
    return "\n".join(lines)


def fmt_ablations(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant (L1000 shape) | s/step | × current | GFLOP/s | page faults/step | compiles |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['s_per_step']:.3f} | {r['ratio_to_current']:.2f} | "
            f"{r['gflops']:.1f} | {_fmt_int(r['page_faults_per_step'])} | {r['compilations']} |"
        )
    return "\n".join(lines)


def _fmt_int(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def fmt_notes(results: list[dict[str, Any]]) -> str:
    lines = []
    for r in results:
        xf = r.get("xla_flops_per_step")
        xla = f"; XLA counts {xf / 1e9:.3g} GFLOP/step" if xf else ""
        lines.append(
            f"- {r['shape']}: {r['data']}; {r['steps_per_epoch_timed']} steps × "
            f"{r['repeats']} rounds; {r['matmul_flops_per_step'] / 1e9:.3g} GFLOP/step "
            f"(10·b·d·k){xla}; square {r['square_n']}³ matmul "
            f"{r['matmul_rate_square_gflops']:.1f} GFLOP/s; first epoch incl. compile "
            f"{r['first_epoch_with_compile_s']:.1f} s; compilations {r['compilations']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.platform:
        os.environ["JAX_PLATFORMS"] = {"gpu": "cuda"}.get(args.platform, args.platform)
    if args.child:
        print("@@RESULT " + json.dumps(run_shape(args.child, args)), flush=True)
        return 0

    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        print(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    # JAX is imported only in the per-shape subprocesses: the parent holds no device
    # memory (a GPU preallocates most of it) and each shape's peak RSS is its own.
    print(f"# genepanel speed benchmark {_dt.date.today().isoformat()}", flush=True)
    forwarded = list(argv if argv is not None else sys.argv[1:])
    results = []
    for shape in shapes:
        t = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--child", shape]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("@@RESULT ")), None)
        if proc.returncode or line is None:
            print(proc.stdout[-2000:] + proc.stderr[-4000:], file=sys.stderr)
            print(f"shape {shape} failed (exit {proc.returncode})", file=sys.stderr)
            return 1
        res = json.loads(line[len("@@RESULT ") :])
        res["wall_s"] = time.perf_counter() - t
        results.append(res)
        print(f"{shape}: done in {res['wall_s']:.0f} s", file=sys.stderr, flush=True)

    info = results[0]["device"]
    text = "device: " + ", ".join(f"{k}={v}" for k, v in info.items())
    text += "\n\n" + fmt_table(results) + "\n\n" + fmt_notes(results)
    abl = next((r["ablations"] for r in results if "ablations" in r), None)
    if abl:
        text += "\n\n" + fmt_ablations(abl)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        if args.out.suffix == ".json":
            payload = {"date": _dt.date.today().isoformat(), "device": info, "results": results}
            args.out.write_text(json.dumps(payload, indent=2) + "\n")
        else:
            args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
