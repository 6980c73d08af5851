"""Convergence on planted gene modules: steps, modules hit, refit MSE, stuck nodes.

Runs ``select_panel`` (in memory, no swap refinement, no baselines) on an ``.h5ad``
written by ``make_synthetic.py`` (or any input; module columns are optional) with
config changes given as ``--set key=json;key=json``, and prints one Markdown row:
converged, steps, final mean max probability, process CPU seconds, modules hit by the
panel and by the k top-variance genes, held-out linear-refit MSE of both panels.
``--diagnose`` also prints, for the least settled nodes, their top probabilities, the
modules of their top genes, the mass on the top gene's module and the mass outside
the node's 10 best genes.

    python benchmarks/make_synthetic.py /tmp/syn.h5ad --cells 5000 --genes 5000 --modules 50
    PYTHONPATH=$PWD python benchmarks/converge_modules.py /tmp/syn.h5ad --k 50
    PYTHONPATH=$PWD python benchmarks/converge_modules.py /tmp/syn.h5ad --k 50 \\
        --set 'train.sharpen=0.01'
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--preprocess", default="log1p")
    ap.add_argument("--set", default="", help="config changes: key=json;key=json")
    ap.add_argument("--label", default="", help="row label (default: the --set text)")
    ap.add_argument("--name", default="", help="data name in the table (default: the path)")
    ap.add_argument("--layer-raw", action="store_true",
                    help="read an AnnData's .raw (scanpy's pbmc68k_reduced)")
    ap.add_argument("--diagnose", type=int, default=0, metavar="N",
                    help="print the N least settled nodes")
    ap.add_argument("--json", help="append the record to this file")
    ap.add_argument("--render", metavar="JSONL",
                    help="print the records of this file as one Markdown table and exit")
    args = ap.parse_args()
    if args.render:
        render(args.render)
        return

    import anndata as ad
    from scale_synthetic import cae_and_topvar, cpu_s

    from genepanel.api import load_input, select_panel
    from genepanel.config import SelectConfig

    changes: dict = {"refine": False}
    for item in filter(None, args.set.split(";")):
        key, value = item.split("=", 1)
        changes[key] = json.loads(value)
    cfg = SelectConfig(k=args.k, preprocess=args.preprocess).replace(**changes)
    if args.layer_raw:
        a = ad.read_h5ad(args.data)
        a = a.raw.to_adata()
        data = load_input(a, cfg)
        module = None
    else:
        data = load_input(args.data, cfg)
        a = ad.read_h5ad(args.data, backed="r")
        module = (np.asarray(a.var["module"]) if "module" in a.var.columns else None)
        a.file.close()
    cpu0, t0 = cpu_s(), time.perf_counter()
    res = select_panel(data, cfg, evaluate_baselines=False)
    cpu, wall = cpu_s() - cpu0, time.perf_counter() - t0
    tr = res.run["training"]
    hist = res.fit.history
    steps = tr["epochs_run"] * tr["steps_per_epoch"]
    cae, top, mse = cae_and_topvar(data, res, args.k, cfg.seed)

    def covered(p: np.ndarray) -> int | None:
        if module is None:
            return None
        return len(set(module[p][module[p] >= 0].tolist()))

    rec = {"data": args.name or args.data, "shape": list(data.shape), "k": args.k,
           "label": args.label or args.set or "default",
           "converged": bool(tr["converged"]), "reassigned": tr["reassigned_at_extraction"],
           "steps": steps, "epochs": tr["epochs_run"],
           "mean_max_prob": hist[-1]["mean_max_prob"], "cpu_s": cpu, "wall_s": wall,
           "modules": None if module is None else int(module.max()) + 1,
           "cae_modules": covered(cae), "topvar_modules": covered(top),
           "cae_mse": mse["cae"], "topvar_mse": mse["topvar"],
           "candidates": tr.get("candidate_genes")}
    for key in ("pruned_to", "extra_steps"):
        if key in tr:
            rec[key] = tr[key]
    print("| data | k | option | converged | steps | final mean max p | CPU s | modules hit: "
          "CAE | top-variance | test MSE: CAE | top-variance |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {data.shape[0]} × {data.shape[1]} | {args.k} | {rec['label']} | "
          f"{'yes' if rec['converged'] and not rec['reassigned'] else 'NO'} | {steps} | "
          f"{rec['mean_max_prob']:.3f} | {cpu:.0f} | {rec['cae_modules']} | "
          f"{rec['topvar_modules']} | {rec['cae_mse']:.4f} | {rec['topvar_mse']:.4f} |")
    if args.diagnose:
        _diagnose(res.fit.params["selector"]["logits"], module, args.diagnose)
        every = max(1, len(hist) // 12)
        print("epoch, temperature, mean max p:",
              ", ".join(f"{h['epoch']}:{h['temperature']:.3f}:{h['mean_max_prob']:.3f}"
                        for h in hist[::every]))
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(rec) + "\n")


def render(path: str) -> None:
    """One Markdown row per record of ``path`` (written by ``--json``)."""
    print("| data | k | option | converged | steps | final mean max p | CPU s | modules hit: "
          "CAE | top-variance | of | test MSE: CAE | top-variance |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    with open(path) as fh:
        for line in fh:
            r = json.loads(line)
            ok = "yes" if r["converged"] and not r["reassigned"] else "**no**"
            mods = ("—", "—", "—") if r["modules"] is None else (
                r["cae_modules"], r["topvar_modules"], r["modules"])
            print(f"| {r['data']} ({r['shape'][0]} × {r['shape'][1]}) | "
                  f"{r['k']} | {r['label']} | {ok} | {r['steps']:,} | "
                  f"{r['mean_max_prob']:.3f} | {r['cpu_s']:.0f} | {mods[0]} | {mods[1]} | "
                  f"{mods[2]} | {r['cae_mse']:.4f} | {r['topvar_mse']:.4f} |")


def _diagnose(logits: np.ndarray, module: np.ndarray | None, n: int) -> None:
    lg = np.asarray(logits, np.float64)
    p = np.exp(lg - lg.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    order = np.argsort(-p, axis=1)
    pmax = p.max(1)
    print(f"nodes with max p < 0.99: {int((pmax < 0.99).sum())} of {len(p)}; "
          f"mean max p {pmax.mean():.3f}")
    for i in np.argsort(pmax)[:n]:
        best = order[i, :5]
        mods = "" if module is None else " modules " + ",".join(str(module[g]) for g in best)
        same = ""
        if module is not None and module[best[0]] >= 0:
            m = module[best[0]]
            same = f"; mass on module {m}: {p[i, module == m].sum():.3f}"
        tail = 1.0 - p[i, order[i, :10]].sum()
        print(f"  node {i}: top p " + ", ".join(f"{v:.3f}" for v in p[i, best]) + mods
              + same + f"; mass outside its 10 best: {tail:.3f}")


if __name__ == "__main__":
    main()
