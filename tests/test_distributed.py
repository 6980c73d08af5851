"""Two processes on localhost (CPU, ``jax.distributed``) train one model like one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd

from tests.conftest import ROOT

SCRIPT = textwrap.dedent(
    """
    import json, sys
    n_proc, pid, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    from genepanel.runtime import maybe_initialize_distributed
    if n_proc > 1:
        maybe_initialize_distributed(f"localhost:{port}", n_proc, pid)
    import jax, numpy as np, pandas as pd
    from genepanel.api import select_panel
    from genepanel.config import SelectConfig
    from genepanel.io import ExpressionData
    from tests.conftest import planted
    x, genes, _, _ = planted(seed=6)
    data = ExpressionData(x, genes, pd.DataFrame(index=range(len(x))), "planted")
    # seed 4, 25 epochs: every node's best logit leads its runner-up by 0.09 or more (the
    # margin check below); seed 3 with 12 epochs, used before the named random streams,
    # now leaves a node at 0.016. Sharpening off: with it (the default now) this run
    # converges sooner and one node leads by only 0.023; the penalty on several devices is
    # checked in test_scale.py (4 fake devices equal 1).
    cfg = SelectConfig(k=5, seed=4).replace(**{"train.learning_rate": 0.01,
        "train.batch_size": 32, "train.max_epochs": 25, "train.device_memory_budget_gb": 0.0,
        "train.sharpen": 0.0})
    res = select_panel(data, cfg, out, evaluate_baselines=False)
    print(json.dumps({"procs": jax.process_count(), "path": res.fit.data_placement,
        "panel": res.panel.indices.tolist(),
        "logits": np.asarray(res.fit.params["selector"]["logits"]).ravel()[::5].tolist(),
        "margin": float(np.min(np.diff(np.sort(np.asarray(
            res.fit.params["selector"]["logits"]), axis=1)[:, -2:], axis=1))),
        "loss": [h["train_loss"] for h in res.fit.history],
        "mse": res.metrics["trained_decoder_test_mse"]}))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(n_proc: int, out, port: int) -> list[dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(n_proc), str(pid), str(port), str(out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for pid in range(n_proc)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def test_two_processes_train_one_model_like_one_process(tmp_path):
    single = _launch(1, tmp_path / "single", _free_port())[0]
    pair = _launch(2, tmp_path / "pair", _free_port())
    assert [r["procs"] for r in pair] == [2, 2]
    assert pair[0]["path"] == "streamed"
    # the two processes hold one model ...
    assert pair[0]["logits"] == pair[1]["logits"]
    # ... which is the model a single process trains, up to floating-point reordering
    # (the two processes reduce gradients in another order than one process)
    np.testing.assert_allclose(pair[0]["logits"], single["logits"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pair[0]["loss"], single["loss"], rtol=1e-4)
    np.testing.assert_allclose(pair[0]["mse"], single["mse"], rtol=1e-4)
    # The panel is each node's argmax: comparing genes exactly is safe only because every
    # node's best logit leads its runner-up by far more than those tolerances.
    assert min(single["margin"], pair[0]["margin"]) > 0.05
    assert pair[0]["panel"] == pair[1]["panel"] == single["panel"]
    # only process 0 wrote, and the folder is complete: the same genes, numbers within
    # tolerance (never compared as text: the last printed digit may differ across CPUs)
    a = pd.read_csv(tmp_path / "pair" / "panel.tsv", sep="\t")
    b = pd.read_csv(tmp_path / "single" / "panel.tsv", sep="\t")
    assert list(a.columns) == list(b.columns)
    assert a["gene"].tolist() == b["gene"].tolist() and a["node"].tolist() == b["node"].tolist()
    np.testing.assert_allclose(a["probability"], b["probability"], rtol=1e-3, atol=1e-6)
    assert not (tmp_path / "pair.partial").exists()
