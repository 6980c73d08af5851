"""Which refined panel to keep: the training-error rule against a validation-error rule.

An experiment, not a change to genepanel: for each (data set, k) of ``quality.py`` (same
``load()``, split, default settings, seed 0) this trains the concrete autoencoder with
``refine`` off, then runs :func:`genepanel.selectors.swap_refine` from its panel and from
the greedy panel itself and scores four candidates:

* ``cae``: the autoencoder's own panel (unrefined),
* ``cae_swap``: the swap optimum reached from it,
* ``greedy``: greedy column subset selection,
* ``greedy_swap``: the swap optimum reached from greedy.

Each candidate's linear refit (on the training rows) is scored on the split's validation
rows and on its test rows. Rules compared:

* ``current``: what ``refine_panel`` keeps today (the swap optimum with the lower
  training refit error; ties within ``TIE_RTOL`` go to the greedy start),
* ``val2``: the swap optimum with the lower validation error,
* ``val4``: the candidate (of all four) with the lowest validation error.

The best baseline is read from the committed ``results/quality/<name>_k<k>.json``.
Prints a Markdown table; ``--out`` also writes it to a file::

    python benchmarks/refine_choice.py --rows pbmc_scaled:25,flu:25 --json /tmp/r.jsonl
    python benchmarks/refine_choice.py --table-from /tmp/r.jsonl   # reprint, no rerun
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import BASELINES, RESULTS, load

DEFAULT_ROWS = ("pbmc_scaled:25,flu:25,mnist:10,pbmc_raw:10,pbmc_scaled:10,celltypist:25,"
                "mice:25,pbmc_raw:50,pbmc_scaled:50,flu:10,mnist:25,coil20:50")
CANDIDATES = ("cae", "cae_swap", "greedy", "greedy_swap")


def committed(name: str, k: int) -> dict:
    """Test MSEs of the committed quality row (by method) and its best baseline."""
    rec = json.loads((RESULTS / f"{name}_k{k}.json").read_text())
    mse = {r["method"]: r["test_mse"] for r in rec["rows"]}
    base = {m: mse[m] for m in BASELINES if m in mse}
    best = min(base, key=base.get)
    return {"mse": mse, "best": best, "best_mse": base[best], "commit": rec["commit"]}


def run_row(name: str, k: int) -> dict:
    from genepanel.api import TIE_RTOL, select_panel
    from genepanel.config import SelectConfig
    from genepanel.dataset import Dataset
    from genepanel.evaluate import fit_linear, linear_test_mse, score
    from genepanel.selectors import greedy_panel, swap_refine

    t0 = time.perf_counter()
    data, changes, _ = load(name)
    cfg = SelectConfig(k=k, seed=0).replace(**changes)
    ds = Dataset.build(data, cfg)
    res = select_panel(ds, cfg.replace(refine=False), evaluate_baselines=False)
    cae = np.asarray(res.panel.indices, np.int64)
    xc = ds.train_centred()
    allowed = np.ones(ds.n_genes, bool)
    runs = {"cae": swap_refine(xc, cae, allowed=allowed)}
    greedy, _ = greedy_panel(ds, k)
    runs["greedy"] = swap_refine(xc, greedy, allowed=allowed)
    panels = {"cae": cae, "cae_swap": runs["cae"].panel, "greedy": np.asarray(greedy),
              "greedy_swap": runs["greedy"].panel}
    panels = {c: np.sort(np.asarray(p, np.int64)) for c, p in panels.items()}
    test = {c: s.test_mse for c, s in score(ds, panels).panels.items()}
    fits = fit_linear(ds.data, ds.pre, ds.split.train, panels)
    val = linear_test_mse(ds.data, ds.pre, ds.val.rows, fits)
    gap = runs["cae"].objective_end / runs["greedy"].objective_end - 1.0
    scale = xc.shape[0] * ds.n_genes
    return {
        "name": name, "k": k, "n_train": len(ds.split.train), "n_val": int(ds.val.n),
        "n_test": len(ds.split.test), "test": test, "val": val,
        "train": {"cae_swap": runs["cae"].objective_end / scale,
                  "greedy_swap": runs["greedy"].objective_end / scale},
        "current": "cae_swap" if gap < -TIE_RTOL else "greedy_swap",
        "val2": min(("cae_swap", "greedy_swap"), key=val.get),
        "val4": min(CANDIDATES, key=val.get),
        "seconds": time.perf_counter() - t0,
    }


def outcome(mse: float, best: float) -> str:
    """win / tie (within 1e-6 relative: e.g. the greedy panel against greedy) / loss."""
    if abs(mse / best - 1) <= 1e-6:
        return "tie"
    return "win" if mse < best else "loss"


def fmt_row(r: dict, c: dict) -> str:
    t = r["test"]
    lo = min(t.values())

    def cell(m: str) -> str:
        s = f"{t[m]:.5g}"
        return f"**{s}**" if t[m] == lo else s

    def pick(rule: str) -> str:
        m = r[rule]
        return f"{m} {t[m]:.5g} ({outcome(t[m], c['best_mse'])})"

    match = abs(t["cae"] / c["mse"]["cae_unrefined"] - 1) < 1e-4 and \
        abs(t[r["current"]] / c["mse"]["cae"] - 1) < 1e-4
    vals = " / ".join(f"{r['val'][m]:.4g}" for m in CANDIDATES)
    return (f"| {r['name']} | {r['k']} | {r['n_train']}/{r['n_val']}/{r['n_test']} | "
            f"{' | '.join(cell(m) for m in CANDIDATES)} | {vals} | {pick('current')} | "
            f"{pick('val2')} | {pick('val4')} | {c['best']} {c['best_mse']:.5g} | "
            f"{'yes' if match else 'NO'} | {r['seconds']:.0f} |")


HEADER = (
    "| data | k | rows train/val/test | test: cae | cae_swap | greedy | greedy_swap | "
    "val MSE (same order) | current rule pick | val2 pick | val4 pick | best baseline "
    "(committed) | matches committed? | s |\n"
    "|---|---:|---|---:|---:|---:|---:|---|---|---|---|---|---|---:|")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=DEFAULT_ROWS, help="name:k,name:k,...")
    ap.add_argument("--out", type=Path, help="also append the table rows to this file")
    ap.add_argument("--json", type=Path, help="append each row's record (JSON lines)")
    ap.add_argument("--table-from", type=Path,
                    help="only reprint the table from records written with --json")
    args = ap.parse_args(argv)
    print(HEADER, flush=True)
    if args.table_from is not None:
        for line in args.table_from.read_text().splitlines():
            r = json.loads(line)
            print(fmt_row(r, committed(r["name"], r["k"])))
        return
    for item in [s for s in args.rows.split(",") if s]:
        name, k = item.split(":")
        r = run_row(name, int(k))
        line = fmt_row(r, committed(name, int(k)))
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")
        if args.json is not None:
            with args.json.open("a") as f:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
