"""Training: state, pure jit-compiled step functions, the fit loop, annealing and stopping.

Python owns the loop, logging, checkpoints and the stopping rule; every numerical step
is a pure function compiled once. Randomness is explicit: the Gumbel noise of step
``s`` is drawn from ``fold_in(key(seed), s)`` and the rows of epoch ``e`` come from a
NumPy generator seeded with ``(seed, attempt, e)``, so a resumed run replays an
uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from genepanel.config import TrainConfig
from genepanel.constraints import MASKED_LOGIT
from genepanel.data import Preprocessor
from genepanel.errors import GenepanelError
from genepanel.io import ExpressionData, atomic_write
from genepanel.model import ConcreteAutoencoder
from genepanel.runtime import batch_sharded, check_batch_size, replicated

State = dict[str, Any]


class Interrupted(GenepanelError):
    """Training stopped by SIGINT (exit 130) or SIGTERM (143) after a checkpoint was written."""

    exit_code = 130

    def __init__(self, msg: str, signum: int | None = None):
        super().__init__(msg)
        if signum == signal.SIGTERM:
            self.exit_code = 143


def temperature(epoch: int | np.ndarray, t0: float, tb: float, epochs: int) -> np.ndarray:
    """Exponential annealing ``T(e) = T0 · (TB/T0)^(e/E)`` (the paper's schedule)."""
    return np.float32(t0 * (tb / t0) ** (np.asarray(epoch, np.float64) / epochs))


# --------------------------------------------------------------------------- row sources


class RowSource:
    """Preprocessed rows of one part of the split, dense on demand.

    When ``materialize`` is set the whole part is preprocessed once into a dense
    array (the fast path); otherwise each batch is read and preprocessed when asked
    for, so a sparse matrix is densified one minibatch at a time.
    """

    def __init__(
        self,
        data: ExpressionData,
        pre: Preprocessor,
        rows: np.ndarray,
        *,
        materialize: bool,
        labels: np.ndarray | None = None,
        n_classes: int = 0,
    ):
        self.data, self.pre, self.rows = data, pre, np.asarray(rows)
        # Supervised mode: label codes per data row (-1: unlabelled), appended one-hot.
        self.labels, self.n_classes = labels, n_classes
        self.dense: np.ndarray | None = None
        if materialize:
            out = np.empty((len(rows), data.shape[1] + n_classes), np.float32)
            for i in range(0, len(rows), 4096):
                out[i : i + 4096] = self._read(self.rows[i : i + 4096])
            self.dense = out

    def _read(self, data_rows: np.ndarray) -> np.ndarray:
        x = self.pre.transform(self.data.rows(data_rows))
        if not self.n_classes:
            return x
        codes = self.labels[data_rows]
        onehot = (codes[:, None] == np.arange(self.n_classes)[None, :]).astype(np.float32)
        return np.concatenate([x, onehot], axis=1)

    @property
    def n(self) -> int:
        """Number of rows."""
        return len(self.rows)

    def batch(self, positions: np.ndarray) -> np.ndarray:
        """Dense preprocessed ``[len(positions), d]`` rows at ``positions`` (into ``rows``)."""
        if self.dense is not None:
            return self.dense[positions]
        order = np.argsort(positions, kind="stable")
        sorted_rows = self.rows[positions[order]]
        block = self._read(sorted_rows)
        out = np.empty_like(block)
        out[order] = block
        return out


def _prefetch(it: Iterator[Any], size: int = 2) -> Iterator[Any]:
    """Run ``it`` in a background thread, ``size`` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def worker() -> None:
        try:
            for item in it:
                q.put(item)
        except BaseException as exc:
            q.put(exc)
        q.put(done)

    threading.Thread(target=worker, daemon=True).start()
    while True:
        item = q.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


# --------------------------------------------------------------------------- results


@dataclass
class FitResult:
    """What :func:`fit` returns."""

    params: dict
    history: list[dict[str, float]]
    converged: bool
    stop_epoch: int | None
    epochs_run: int
    collisions: int
    attempts: int
    data_placement: str  # "device" (the training matrix on the device) or "streamed"
    batch_size: int
    steps_per_epoch: int
    n_devices: int
    compilations: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def convergence_note(
    result: FitResult, cfg: TrainConfig, *, n_genes: int, n_candidates: int,
    reassigned: int = 0,
) -> str:
    """One sentence on how training ended and, when it did not converge, what to change.

    ``n_genes`` is the matrix width, ``n_candidates`` the number of genes the selector
    chose from (smaller after a prefilter); ``reassigned`` the nodes moved at extraction.
    """
    last = result.history[-1] if result.history else {}
    if result.converged:
        text = (f"converged at epoch {result.stop_epoch} "
                f"({result.stop_epoch * result.steps_per_epoch} steps)")
        if reassigned:
            text += f"; {reassigned} node(s) reassigned at extraction"
        return text
    steps = result.epochs_run * result.steps_per_epoch
    p = last.get("mean_max_prob", float("nan"))
    text = (f"NOT CONVERGED: stopped at the cap after {result.epochs_run} epochs "
            f"({steps} steps) with mean maximum selection probability {p:.2f} "
            f"(the stopping rule needs {cfg.stop_threshold})")
    if reassigned:
        text += f" and {reassigned} node(s) reassigned at extraction"
    text += "; the panel may be little better than a random one. To fix: "
    fixes = []
    if cfg.max_epochs is not None:
        fixes.append(f"drop --epochs (now {cfg.max_epochs}, {steps} optimiser steps) so that "
                     f"--anneal-steps sets the annealing length, or raise it")
    else:
        fixes.append(f"raise --anneal-steps (now {cfg.anneal_steps}; try "
                     f"{2 * cfg.anneal_steps})")
    if cfg.learning_rate != 1e-2:
        fixes.append(f"use the default --lr 1e-2 (now {cfg.learning_rate:g}; a lower rate "
                     "needs more steps, a higher one can keep nodes from settling)")
    if n_candidates > 8000:
        fixes.append(f"choose from fewer candidate genes (the selector saw {n_candidates} of "
                     f"{n_genes}; --prefilter 2000, or --candidates)")
    fixes.append("or pass --retry to restart with twice the steps")
    return text + "; ".join(fixes)


# --------------------------------------------------------------------------- trainer


class Trainer:
    """Holds the model, the optimiser and the compiled step functions for one shape."""

    def __init__(
        self,
        k: int,
        d: int,
        hidden: tuple[int, ...],
        cfg: TrainConfig,
        seed: int,
        mesh: Mesh,
        *,
        mask: np.ndarray | None = None,
        n_labels: int = 0,
        label_weight: float = 1.0,
        columns: np.ndarray | None = None,
        constant: np.ndarray | None = None,
    ):
        self.k, self.d, self.hidden, self.cfg, self.seed, self.mesh = k, d, hidden, cfg, seed, mesh
        # The candidate columns the selector chooses from (a prefilter); None: all d.
        self.columns = None if columns is None else np.asarray(columns, np.int32)
        self.width = d if self.columns is None else len(self.columns)
        # [k, d] logits each node may use (panel constraints); None: all of them.
        if mask is not None and self.columns is not None:
            mask = mask[:, self.columns]
        self.mask = mask
        # Genes constant on the training rows ([d] value, NaN where not constant): the
        # decoder predicts their value without training a weight for them.
        self.outputs: np.ndarray | None = None
        self.constant_value = np.zeros(d, np.float32)
        if constant is not None:
            is_const = np.zeros(d, bool)
            is_const[: len(constant)] = ~np.isnan(constant)
            if is_const.any():
                self.outputs = np.flatnonzero(~is_const).astype(np.int32)
                self.constant_value[: len(constant)] = np.nan_to_num(constant)
        self.n_out = d if self.outputs is None else len(self.outputs)
        # Supervised mode: the last n_labels of the d columns are one-hot labels, which the
        # selector never sees (masked) and the decoder predicts with cross-entropy.
        self.n_labels, self.label_weight = n_labels, label_weight
        self.n_genes = d - n_labels
        self.model = ConcreteAutoencoder(k, self.width, hidden, d_out=self.n_out)
        self.tx = optax.adam(cfg.learning_rate)
        self.n_devices = mesh.devices.size
        rep, bsh = replicated(mesh), batch_sharded(mesh)
        self._rep, self._bsh = rep, bsh
        self.step_fn = jax.jit(
            self._step, in_shardings=(rep, bsh, rep, rep), out_shardings=(rep, rep),
            donate_argnums=0,
        )
        self.epoch_fn = jax.jit(
            self._epoch, in_shardings=(rep, rep, rep, rep, rep), out_shardings=(rep, rep),
            donate_argnums=0,
        )
        self.sse_fn = jax.jit(self._sse, in_shardings=(rep, bsh, rep, bsh), out_shardings=rep)
        self.stats_fn = jax.jit(self._stats)
        self.resolve_fn = jax.jit(self._resolve)

    # ---- pure functions -------------------------------------------------------------

    def init_state(self, attempt: int = 0) -> State:
        """Fresh parameters and optimiser state (replicated)."""
        def init(mask: jax.Array | None) -> State:
            key = jax.random.fold_in(jax.random.key(self.seed), 1000 + attempt)
            x0 = jnp.zeros((1, self.width), jnp.float32)
            params = self.model.init(key, x0, jnp.float32(1.0), key)["params"]
            if mask is not None:
                # Masked logits get zero softmax weight, hence zero gradient: they stay put.
                logits = params["selector"]["logits"]
                params["selector"]["logits"] = jnp.where(mask, logits, MASKED_LOGIT)
            return {"params": params, "opt": self.tx.init(params), "step": jnp.int32(0)}

        # Built by a jitted function so that every process gets the same replicated state.
        return jax.jit(init, out_shardings=self._rep)(self.mask)

    def _loss(self, params: dict, xb: jax.Array, temp: jax.Array, key: jax.Array) -> jax.Array:
        xs = xb if self.columns is None else xb[:, self.columns]
        recon = self.model.apply({"params": params}, xs, temp, key)
        if self.outputs is None and not self.n_labels:
            return jnp.mean(jnp.square(recon - xb))
        if self.outputs is not None:
            # Constant genes are left out of the decoder; their error on training rows is
            # 0, so the mean over all genes is the sum over the others / (b · n_genes).
            xb = xb[:, self.outputs]
        g, w = self.n_out - self.n_labels, self.label_weight
        if self.outputs is None:
            mse = jnp.mean(jnp.square(recon[:, :g] - xb[:, :g]))
        else:
            mse = jnp.sum(jnp.square(recon[:, :g] - xb[:, :g])) / (xb.shape[0] * self.n_genes)
        if not self.n_labels:
            return mse
        ce = jnp.mean(optax.softmax_cross_entropy(recon[:, g:], xb[:, g:]))
        if w == 1.0:
            return ce
        return (1.0 - w) * mse + w * ce

    def _step(
        self, state: State, xb: jax.Array, temp: jax.Array, base_key: jax.Array
    ) -> tuple[State, jax.Array]:
        key = jax.random.fold_in(base_key, state["step"])
        loss, grads = jax.value_and_grad(self._loss)(state["params"], xb, temp, key)
        updates, opt = self.tx.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return {"params": params, "opt": opt, "step": state["step"] + 1}, loss

    def _epoch(
        self, state: State, X: jax.Array, perm: jax.Array, temp: jax.Array, base_key: jax.Array
    ) -> tuple[State, jax.Array]:
        def body(st: State, idx: jax.Array) -> tuple[State, jax.Array]:
            xb = jax.lax.with_sharding_constraint(X[idx], self._bsh)
            return self._step(st, xb, temp, base_key)

        state, losses = jax.lax.scan(body, state, perm)
        return state, jnp.mean(losses)

    def _sse(
        self, params: dict, xb: jax.Array, sel: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Test-time model (hard selection ``sel``) on a padded chunk ``xb`` ``[c, d]``.

        Returns the summed squared error over the gene columns and, in supervised mode,
        the summed cross-entropy and the number of correctly predicted labels.
        """
        recon = self.model.apply({"params": params}, xb[:, sel], method=ConcreteAutoencoder.decode)
        if self.outputs is not None:  # constant genes: their training value
            full = jnp.broadcast_to(jnp.asarray(self.constant_value), (xb.shape[0], self.d))
            recon = full.at[:, self.outputs].set(recon)
        g = self.n_genes
        sse = jnp.sum(jnp.square(recon[:, :g] - xb[:, :g]) * mask[:, None])
        if not self.n_labels:
            return sse, jnp.float32(0.0), jnp.float32(0.0)
        target = xb[:, g:]
        ce = jnp.sum(optax.softmax_cross_entropy(recon[:, g:], target) * mask)
        hit = (jnp.argmax(recon[:, g:], -1) == jnp.argmax(target, -1)) & (target.sum(-1) > 0)
        return sse, ce, jnp.sum(hit * mask)

    @staticmethod
    def _stats(logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        probs = jax.nn.softmax(logits, axis=-1)
        return jnp.mean(jnp.max(probs, axis=-1)), jnp.argmax(probs, axis=-1), jnp.max(probs, -1)

    @staticmethod
    def _resolve(logits: jax.Array, threshold: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Push every node that collides with a more confident node to re-explore.

        A node whose argmax gene is also the argmax of a more confident node (ties go
        to the lower index), and whose own maximum probability exceeds ``threshold``,
        has its logit on that gene set to its row minimum: the gene is left to the
        other node and this node's mass moves to its next candidates.
        """
        probs = jax.nn.softmax(logits, axis=-1)
        top = jnp.argmax(probs, axis=-1)
        pmax = jnp.max(probs, axis=-1)
        idx = jnp.arange(logits.shape[0])
        same = top[:, None] == top[None, :]
        stronger = (pmax[None, :] > pmax[:, None]) | (
            (pmax[None, :] == pmax[:, None]) & (idx[None, :] < idx[:, None])
        )
        loser = jnp.any(same & stronger, axis=1) & (pmax > threshold)
        hit = jax.nn.one_hot(top, logits.shape[1], dtype=bool) & loser[:, None]
        row_min = jnp.min(logits, axis=-1, keepdims=True)
        return jnp.where(hit, row_min, logits), jnp.sum(loser)

    # ---- helpers --------------------------------------------------------------------

    def selection(self, params: dict) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean row-max probability, argmax gene per node, row-max probability per node).

        Gene indices are columns of the full matrix (also after a prefilter).
        """
        mean_max, top, pmax = self.stats_fn(params["selector"]["logits"])
        top = np.asarray(top)
        if self.columns is not None:
            top = self.columns[top]
        return float(mean_max), top, np.asarray(pmax)

    def full_params(self, params: dict) -> dict:
        """Host copy of ``params`` with the selector logits widened to all ``d`` columns.

        Columns outside the candidate prefilter get :data:`MASKED_LOGIT` (zero probability);
        the decoder's output layer is widened to every gene, constant genes predicted by
        their training value (zero weights, bias = the value).
        """
        params = jax.device_get(params)
        if self.columns is not None:
            logits = np.asarray(params["selector"]["logits"])
            full = np.full((self.k, self.d), MASKED_LOGIT, logits.dtype)
            full[:, self.columns] = logits
            params = {**params, "selector": {**params["selector"], "logits": full}}
        if self.outputs is not None:
            out = params["decoder"]["out"]
            kernel = np.zeros((out["kernel"].shape[0], self.d), np.float32)
            kernel[:, self.outputs] = out["kernel"]
            bias = self.constant_value.copy()
            bias[self.outputs] = out["bias"]
            params = {**params, "decoder": {**params["decoder"],
                                            "out": {"kernel": kernel, "bias": bias}}}
        return params

    def compact_params(self, params: dict) -> dict:
        """``params`` with the decoder's output layer on the trained (non-constant) genes."""
        if self.outputs is None:
            return params
        out = params["decoder"]["out"]
        if out["kernel"].shape[-1] == self.n_out:
            return params
        out = {"kernel": np.asarray(out["kernel"])[:, self.outputs],
               "bias": np.asarray(out["bias"])[self.outputs]}
        return {**params, "decoder": {**params["decoder"], "out": out}}

    def global_batch(self, source: RowSource, positions: np.ndarray) -> np.ndarray | jax.Array:
        """The minibatch at ``positions``, sharded over the mesh.

        In a single process this is the host array (``jit`` shards it). With several
        processes every process computes the same ``positions`` and reads only its own
        contiguous slice of them; the slices form one global array.
        """
        n_proc = jax.process_count()
        if n_proc == 1:
            return source.batch(positions)
        local = len(positions) // n_proc
        mine = positions[jax.process_index() * local : (jax.process_index() + 1) * local]
        return jax.make_array_from_process_local_data(self._bsh, source.batch(mine))

    def evaluate(
        self, params: dict, source: RowSource, sel: np.ndarray, chunk: int
    ) -> dict[str, float]:
        """Hard-selection metrics over ``source``: gene MSE; label CE and accuracy if supervised."""
        sse = ce = hits = 0.0
        sel_dev = np.asarray(sel, np.int32)
        params = self.compact_params(params)
        padded = _Padded(source, chunk, self.d)
        for start in range(0, source.n, chunk):
            pos = np.arange(start, start + chunk)
            xb = self.global_batch(padded, pos)
            mask = self.global_batch(padded.mask_source(), pos)
            s_, c_, h_ = self.sse_fn(params, xb, sel_dev, mask)
            sse, ce, hits = sse + float(s_), ce + float(c_), hits + float(h_)
        out = {"mse": sse / (source.n * self.n_genes)}
        if self.n_labels:
            labelled = int((source.labels[source.rows] >= 0).sum())
            out["cross_entropy"] = ce / max(labelled, 1)
            out["accuracy"] = hits / max(labelled, 1)
            out["loss"] = (1 - self.label_weight) * out["mse"] + self.label_weight * out[
                "cross_entropy"]
        else:
            out["loss"] = out["mse"]
        return out

class _Padded:
    """A row source padded with zero rows (and a 0/1 mask source) to whole chunks."""

    def __init__(self, source: RowSource, chunk: int, d: int, *, mask: bool = False):
        self.source, self.chunk, self.d, self.mask = source, chunk, d, mask

    def mask_source(self) -> _Padded:
        return _Padded(self.source, self.chunk, self.d, mask=True)

    def batch(self, positions: np.ndarray) -> np.ndarray:
        real = positions[positions < self.source.n]
        if self.mask:
            return (positions < self.source.n).astype(np.float32)
        out = np.zeros((len(positions), self.d), np.float32)
        if len(real):
            out[: len(real)] = self.source.batch(real)
        return out


def epoch_order(n: int, rng: np.random.Generator, block: int = 1) -> np.ndarray:
    """A random order of ``n`` rows; with ``block > 1`` whole runs of ``block`` rows move.

    Blocks keep disk reads contiguous while minibatches still mix rows from across
    the whole data set (each minibatch of ``b`` rows draws ``b / block`` random blocks).
    """
    if block <= 1:
        return rng.permutation(n)
    starts = rng.permutation(np.arange(0, n, block))
    return np.concatenate([np.arange(s, min(s + block, n)) for s in starts])


def eval_chunk(n: int, n_devices: int, cap: int = 2048) -> int:
    """Rows per evaluation call: at most ``cap``, a multiple of the device count."""
    c = min(cap, max(n, 1))
    return ((c + n_devices - 1) // n_devices) * n_devices


def default_batch_size(n_train: int) -> int:
    """``min(256, max(16, n_train // 16))``: at least 16 minibatches per epoch when small."""
    return min(256, max(16, n_train // 16))


def epochs_for(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The annealing length and epoch cap ``E``: ``max_epochs``, or ``anneal_steps`` worth."""
    if cfg.max_epochs is not None:
        return cfg.max_epochs
    return max(1, -(-cfg.anneal_steps // steps_per_epoch))


def effective_batch_size(requested: int | None, n_train: int, n_devices: int) -> int:
    """The global minibatch size, a multiple of the device count.

    ``requested`` (default: :func:`default_batch_size`), or all training rows when there
    are fewer.
    """
    if requested is None:
        requested = max(n_devices, default_batch_size(n_train) // n_devices * n_devices)
    if requested <= n_train:
        check_batch_size(requested, n_devices)
        return requested
    b = (n_train // n_devices) * n_devices
    if b < n_devices:
        check_batch_size(n_train, n_devices)
    return b


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: State, meta: dict[str, Any]) -> None:
    """Write ``state`` and ``meta`` to ``path`` atomically (msgpack)."""
    host = jax.device_get(state)
    payload = {"state": flax.serialization.to_state_dict(host), "meta": meta}
    with atomic_write(path, "wb") as fh:
        fh.write(flax.serialization.msgpack_serialize(payload))


def load_checkpoint(path: Path, template: State) -> tuple[State, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``template``."""
    payload = flax.serialization.msgpack_restore(path.read_bytes())
    state = flax.serialization.from_state_dict(jax.device_get(template), payload["state"])
    return state, payload["meta"]


@contextlib.contextmanager
def _stop_signals() -> Iterator[dict[str, Any]]:
    """Turn SIGINT/SIGTERM into a flag checked between epochs (a second SIGINT aborts)."""
    flag: dict[str, Any] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: Any) -> None:
        del frame
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------- fit loop


def fit(
    trainer: Trainer,
    train: RowSource,
    val: RowSource | None,
    *,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    seed: int | None = None,
) -> FitResult:
    """Train until the selection converges or the epoch cap; see :class:`TrainConfig`.

    ``seed`` (default: the trainer's) seeds initialisation, Gumbel noise and row order;
    changing it reuses the compiled step functions. ``stop_after_epochs`` (testing aid)
    interrupts the run after that many epochs, as a SIGTERM would, leaving a checkpoint
    to resume from.
    """
    if seed is not None:
        trainer.seed = seed
    cfg = trainer.cfg
    n_dev = trainer.n_devices
    batch = effective_batch_size(cfg.batch_size, train.n, n_dev)
    steps = train.n // batch
    on_device = train.dense is not None and jax.process_count() == 1
    base_key = jax.random.key(trainer.seed)
    if on_device:
        X_dev = jax.device_put(train.dense, trainer._rep)
    chunk = eval_chunk(val.n if val is not None else 1, n_dev)
    # Rows on disk are shuffled in contiguous blocks (8 per minibatch) to keep reads long.
    shuffle_block = max(1, batch // 8) if train.data.is_backed else 1
    thr = jnp.float32(cfg.collision_threshold)

    attempt, epoch, history, collisions = 0, 0, [], 0
    max_epochs = epochs_for(cfg, steps)
    state = trainer.init_state(attempt)
    if resume and checkpoint is not None and checkpoint.exists():
        state, meta = load_checkpoint(checkpoint, state)
        state = jax.jit(lambda st: st, out_shardings=trainer._rep)(state)
        attempt, epoch, history = meta["attempt"], meta["epoch"], meta["history"]
        collisions, max_epochs = meta["collisions"], meta["max_epochs"]

    def save() -> None:
        if checkpoint is not None and jax.process_index() == 0:
            save_checkpoint(
                checkpoint,
                state,
                {"attempt": attempt, "epoch": epoch, "history": history,
                 "collisions": collisions, "max_epochs": max_epochs},
            )

    t_start = time.perf_counter()
    converged, stop_epoch = False, None
    with _stop_signals() as stop:
        while True:
            while epoch < max_epochs:
                t_epoch = time.perf_counter()
                temp = temperature(epoch, cfg.t0, cfg.tb, max_epochs)
                rng = np.random.default_rng([trainer.seed, attempt, epoch])
                perm = epoch_order(train.n, rng, block=shuffle_block)
                perm = perm[: steps * batch].reshape(steps, batch)
                if on_device:
                    state, loss = trainer.epoch_fn(
                        state, X_dev, perm.astype(np.int32), temp, base_key
                    )
                else:
                    losses = []
                    batches = _prefetch(trainer.global_batch(train, p) for p in perm)
                    for xb in batches:
                        state, loss_s = trainer.step_fn(state, xb, temp, base_key)
                        losses.append(loss_s)
                    loss = jnp.mean(jnp.stack(losses))
                logits, n_coll = trainer.resolve_fn(state["params"]["selector"]["logits"], thr)
                state["params"]["selector"]["logits"] = logits
                n_coll = int(n_coll)
                collisions += n_coll
                mean_max, top, _ = trainer.selection(state["params"])
                val_metrics = (
                    trainer.evaluate(state["params"], val, top, chunk)
                    if val is not None and val.n
                    else {}
                )
                record = {
                    "epoch": epoch + 1,
                    "epochs": max_epochs,
                    "temperature": float(temp),
                    "mean_max_prob": mean_max,
                    "train_loss": float(loss),
                    "val_loss": val_metrics.get("loss", float("nan")),
                    "collisions": n_coll,
                    "unique_genes": len(np.unique(top)),
                    "seconds": time.perf_counter() - t_epoch,
                }
                if "accuracy" in val_metrics:
                    record["val_accuracy"] = val_metrics["accuracy"]
                history.append(record)
                epoch += 1
                if on_epoch is not None:
                    on_epoch(record)
                if mean_max > cfg.stop_threshold and n_coll == 0:
                    converged, stop_epoch = True, epoch
                    break
                if cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0:
                    save()
                if stop["signal"] is not None or (
                    stop_after_epochs is not None and len(history) >= stop_after_epochs
                ):
                    save()
                    where = f"; resume with --resume ({checkpoint})" if checkpoint else ""
                    msg = f"interrupted after epoch {epoch}{where}"
                    raise Interrupted(msg, stop["signal"])
            if converged or not cfg.retry_unconverged or attempt >= cfg.max_retries:
                break
            attempt += 1
            max_epochs *= 2
            epoch = 0
            state = trainer.init_state(attempt)
            if on_epoch is not None:
                on_epoch({"restart": attempt, "max_epochs": max_epochs})

    compilations = {
        "epoch": trainer.epoch_fn._cache_size(),
        "step": trainer.step_fn._cache_size(),
        "eval": trainer.sse_fn._cache_size(),
    }
    return FitResult(
        params=trainer.full_params(state["params"]),
        history=history,
        converged=converged,
        stop_epoch=stop_epoch,
        epochs_run=len(history),
        collisions=collisions,
        attempts=attempt + 1,
        data_placement="device" if on_device else "streamed",
        batch_size=batch,
        steps_per_epoch=steps,
        n_devices=n_dev,
        compilations=compilations,
        seconds=time.perf_counter() - t_start,
    )
