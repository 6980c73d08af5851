"""Training: state, pure jit-compiled step functions, the fit loop, annealing and stopping.

Python owns the loop, logging, checkpoints and the stopping rule; every numerical step
is a module-level pure function of a :class:`TrainState`, compiled once per
:class:`Trainer` (the static pieces: model, optimiser, shapes) and reused for every seed,
restart and retry. Randomness is explicit, in three named streams per attempt (see
:func:`random_streams`): parameter initialisation, the Gumbel noise of each step and the
row order of each epoch, so a resumed run replays an uninterrupted one exactly and a
retry draws afresh.
"""

from __future__ import annotations

import contextlib
import functools
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
from flax import struct
from jax.sharding import Mesh, Sharding

from genepanel.config import TrainConfig
from genepanel.constraints import MASKED_LOGIT
from genepanel.data import Preprocessor, block_rows
from genepanel.errors import DataError, GenepanelError
from genepanel.io import ExpressionData, atomic_write
from genepanel.model import ConcreteAutoencoder
from genepanel.runtime import batch_sharded, check_batch_size, replicated


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
    if not cfg.sharpen and p >= 0.9:  # nearly settled: nodes split among similar genes
        fixes.append("try --sharpen 0.01 (settles nodes whose probability stays split among "
                     "near-identical genes)")
    fixes.append("or pass --retry to restart with twice the steps")
    return text + "; ".join(fixes)


# --------------------------------------------------------------------------- random streams

#: Stream ids. The key of stream ``i`` in attempt ``a`` of a run with seed ``s`` is
#: ``fold_in(fold_in(key(s), a), i)``: distinct fold-ins, so no two streams (nor two
#: attempts) share a key (tests check the first 4096 noise keys), and a retry
#: (attempt ``a + 1``) draws all three afresh.
STREAM_INIT = 0  # parameter initialisation (selector logits, decoder weights)
STREAM_NOISE = 1  # Gumbel noise: optimiser step ``t`` draws from ``fold_in(noise, t)``
STREAM_ROWS = 2  # row order: epoch ``e`` is shuffled by a NumPy generator seeded with
#                  (the words of ``rows``, e)


class RandomStreams(struct.PyTreeNode):
    """The three random streams of one training attempt (typed PRNG keys)."""

    init: jax.Array
    noise: jax.Array
    rows: jax.Array


def random_streams(seed: int, attempt: int = 0) -> RandomStreams:
    """The streams of ``attempt`` (0: the first, 1: the first retry, ...) for ``seed``."""
    attempt_key = jax.random.fold_in(jax.random.key(seed), attempt)
    return RandomStreams(
        init=jax.random.fold_in(attempt_key, STREAM_INIT),
        noise=jax.random.fold_in(attempt_key, STREAM_NOISE),
        rows=jax.random.fold_in(attempt_key, STREAM_ROWS),
    )


def noise_key(noise: jax.Array, step: jax.Array | int) -> jax.Array:
    """The key of the Gumbel noise drawn at optimiser step ``step`` (0-based, per attempt)."""
    return jax.random.fold_in(noise, step)


def key_words(key: jax.Array) -> list[int]:
    """The raw words of a typed PRNG key, on the host."""
    return np.asarray(jax.random.key_data(key)).ravel().tolist()


def row_order_rng(rows: list[int], epoch: int) -> np.random.Generator:
    """The NumPy generator that orders the rows of ``epoch`` (0-based, per attempt).

    ``rows`` is :func:`key_words` of the attempt's row-order stream; the epoch is mixed
    in by NumPy's seed sequence (no device call per epoch).
    """
    return np.random.default_rng([*rows, epoch])


# --------------------------------------------------------------------------- state and steps


class TrainState(struct.PyTreeNode):
    """Everything that changes during training: one pytree, passed through pure steps.

    ``step`` counts optimiser steps of the current attempt (it picks the noise key);
    ``keys`` are the attempt's :class:`RandomStreams`.
    """

    params: Any
    opt_state: Any
    step: jax.Array
    keys: RandomStreams


def init_state(
    keys: RandomStreams,
    mask: jax.Array | None,
    *,
    model: ConcreteAutoencoder,
    tx: optax.GradientTransformation,
    width: int,
) -> TrainState:
    """Fresh parameters from ``keys.init`` and optimiser state; ``mask``: allowed logits."""
    x0 = jnp.zeros((1, width), jnp.float32)
    params = model.init({"params": keys.init}, x0, jnp.float32(1.0), keys.init)["params"]
    if mask is not None:
        # Masked logits get zero softmax weight, hence zero gradient: they stay put.
        selector = {**params["selector"],
                    "logits": jnp.where(mask, params["selector"]["logits"], MASKED_LOGIT)}
        params = {**params, "selector": selector}
    return TrainState(params=params, opt_state=tx.init(params), step=jnp.int32(0), keys=keys)


#: The sharpening penalty acts once the temperature is at most this many times TB (with
#: the default T0/TB = 1000, the last third of the anneal).
SHARPEN_FROM = 10.0


def sharpen_penalty(logits: jax.Array, temp: jax.Array, weight: float, tb: float) -> jax.Array:
    """``weight ·`` the sum over nodes of the entropy of ``softmax(logits)``, late in the anneal.

    Planted gene modules hold near-interchangeable genes; late in the anneal a node's
    mass stays split among members of one module, because the reconstruction barely
    prefers one of them and the Gumbel-softmax gradient at low temperature is rare
    and noisy. The entropy's gradient is smooth and favours each node's current
    leader. It is switched on only once ``temp <= SHARPEN_FROM · tb`` (Adam rescales
    any small weight to full-size steps, so a weight that fades with the temperature
    would still act early). Before that point the penalty and its gradient are exactly
    zero, so a run that converges earlier follows the default run (up to float
    rounding: the compiled step differs). Summed over nodes, each node's pull does not
    depend on ``k``.
    """
    logp = jax.nn.log_softmax(logits, axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    on = (temp <= SHARPEN_FROM * tb).astype(entropy.dtype)
    return weight * on * jnp.sum(entropy)


def reconstruction_loss(
    params: Any,
    xb: jax.Array,
    temp: jax.Array,
    key: jax.Array,
    *,
    model: ConcreteAutoencoder,
    n_genes: int,
    columns: np.ndarray | None = None,
    outputs: np.ndarray | None = None,
    n_labels: int = 0,
    label_weight: float = 1.0,
) -> jax.Array:
    """Training loss of one minibatch ``xb`` ``[b, d]`` with soft selection at ``temp``.

    ``columns``: the candidate columns the selector reads (None: all); ``outputs``: the
    non-constant columns the decoder predicts (None: all); the last ``n_labels`` of the
    ``d`` columns are one-hot labels scored by cross-entropy, weighted ``label_weight``.
    """
    xs = xb if columns is None else xb[:, columns]
    recon = model.apply({"params": params}, xs, temp, key)
    if outputs is None and not n_labels:
        return jnp.mean(jnp.square(recon - xb))
    if outputs is not None:
        # Constant genes are left out of the decoder; their error on training rows is
        # 0, so the mean over all genes is the sum over the others / (b · n_genes).
        xb = xb[:, outputs]
    g = recon.shape[-1] - n_labels
    if outputs is None:
        mse = jnp.mean(jnp.square(recon[:, :g] - xb[:, :g]))
    else:
        mse = jnp.sum(jnp.square(recon[:, :g] - xb[:, :g])) / (xb.shape[0] * n_genes)
    if not n_labels:
        return mse
    ce = jnp.mean(optax.softmax_cross_entropy(recon[:, g:], xb[:, g:]))
    if label_weight == 1.0:
        return ce
    return (1.0 - label_weight) * mse + label_weight * ce


LossFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def with_sharpening(loss_fn: LossFn, weight: float, tb: float) -> LossFn:
    """``loss_fn`` plus :func:`sharpen_penalty` (final temperature ``tb``); as is when 0."""
    if not weight:
        return loss_fn

    def loss(params: Any, xb: jax.Array, temp: jax.Array, key: jax.Array) -> jax.Array:
        penalty = sharpen_penalty(params["selector"]["logits"], temp, weight, tb)
        return loss_fn(params, xb, temp, key) + penalty

    return loss


def train_step(
    state: TrainState,
    xb: jax.Array,
    temp: jax.Array,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
) -> tuple[TrainState, jax.Array]:
    """One optimiser step on minibatch ``xb``; the noise key comes from ``state``."""
    key = noise_key(state.keys.noise, state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, xb, temp, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), loss


def train_epoch(
    state: TrainState,
    X: jax.Array,
    perm: jax.Array,
    temp: jax.Array,
    *,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    batch_sharding: Sharding | None = None,
) -> tuple[TrainState, jax.Array]:
    """One epoch as a ``lax.scan`` over the minibatches ``X[perm[i]]``; the mean loss."""

    def body(st: TrainState, idx: jax.Array) -> tuple[TrainState, jax.Array]:
        xb = X[idx]
        if batch_sharding is not None:
            xb = jax.lax.with_sharding_constraint(xb, batch_sharding)
        return train_step(st, xb, temp, loss_fn=loss_fn, tx=tx)

    state, losses = jax.lax.scan(body, state, perm)
    return state, jnp.mean(losses)


def eval_sse(
    params: Any,
    xb: jax.Array,
    sel: jax.Array,
    mask: jax.Array,
    *,
    model: ConcreteAutoencoder,
    n_genes: int,
    n_labels: int = 0,
    outputs: np.ndarray | None = None,
    constant_value: np.ndarray | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Test-time model (hard selection ``sel``) on a padded chunk ``xb`` ``[c, d]``.

    ``mask`` is 1 on real rows, 0 on padding. Returns the summed squared error over the
    gene columns and, in supervised mode, the summed cross-entropy and the number of
    correctly predicted labels. With ``outputs`` the decoder predicts those columns and
    the others are predicted by ``constant_value`` (``[d]``).
    """
    recon = model.apply({"params": params}, xb[:, sel], method=ConcreteAutoencoder.decode)
    if outputs is not None:  # constant genes: their training value
        full = jnp.broadcast_to(jnp.asarray(constant_value), xb.shape)
        recon = full.at[:, outputs].set(recon)
    g = n_genes
    sse = jnp.sum(jnp.square(recon[:, :g] - xb[:, :g]) * mask[:, None])
    if not n_labels:
        return sse, jnp.float32(0.0), jnp.float32(0.0)
    target = xb[:, g:]
    ce = jnp.sum(optax.softmax_cross_entropy(recon[:, g:], target) * mask)
    hit = (jnp.argmax(recon[:, g:], -1) == jnp.argmax(target, -1)) & (target.sum(-1) > 0)
    return sse, ce, jnp.sum(hit * mask)


def selection_stats(logits: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(mean row-max probability, argmax column per node, row-max probability per node)."""
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.mean(jnp.max(probs, axis=-1)), jnp.argmax(probs, axis=-1), jnp.max(probs, -1)


def resolve_collisions(
    logits: jax.Array, threshold: jax.Array, exclude_held: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Push every node that collides with a more confident node to re-explore.

    A node whose argmax gene is also the argmax of a more confident node (ties go
    to the lower index), and whose own maximum probability exceeds ``threshold``,
    has its logit on that gene set to its row minimum: the gene is left to the
    other node and this node's mass moves to its next candidates. With
    ``exclude_held`` (the sharpening phase, see :func:`exclude_held_genes`) the pushed
    node's logits on every gene another node holds (its argmax) are set to the row
    minimum too, so its next candidate is a gene nobody holds. Returns the new
    logits and the number of nodes pushed.
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
    hit = jax.nn.one_hot(top, logits.shape[1], dtype=jnp.int32)  # [k, d]: each node's gene
    # Genes held by some node other than the row's own.
    held_by_other = (jnp.sum(hit, axis=0)[None, :] - hit) > 0
    drop = (hit > 0) | (jnp.asarray(exclude_held) & held_by_other)
    row_min = jnp.min(logits, axis=-1, keepdims=True)
    return jnp.where(drop & loser[:, None], row_min, logits), jnp.sum(loser)


def exclude_held_genes(temp: float, tb: float) -> bool:
    """Whether collision resolution at ``temp`` also steers pushed nodes off held genes.

    From the sharpening phase on (``temp <= SHARPEN_FROM · tb``) a node's samples are
    nearly one-hot and its entropy penalty pulls it onto its current leader, so a node
    pushed off a gene takes its next-best gene within the epoch; when that gene is held
    by another node it collides again at the next check. On 100,000 × 30,000 planted
    modules (k = 200, 562-step epochs) two nodes still collided at every check when the
    run reached its cap; with this rule the same run converged at 15,736 steps
    (``benchmarks/scale.md``). Earlier in the anneal the rule is left as it was (runs
    that settle before this phase are unchanged).
    """
    return bool(temp <= SHARPEN_FROM * tb)


def with_logits(params: Any, logits: jax.Array) -> Any:
    """``params`` with the selector logits replaced (a new dict; ``params`` is unchanged)."""
    return {**params, "selector": {**params["selector"], "logits": logits}}


# --------------------------------------------------------------------------- trainer


class Trainer:
    """The static pieces of training one shape, and the compiled step functions over them.

    A trainer holds no training state and :func:`fit` never changes it: the
    :class:`TrainState` travels through the compiled functions, and its keys are traced
    arguments, so one trainer (one compilation) serves every seed, restart and retry.
    ``seed`` is only the default of :func:`fit`.
    """

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
        self._rep, self._bsh = replicated(mesh), batch_sharded(mesh)
        self.loss_fn: LossFn = with_sharpening(functools.partial(
            reconstruction_loss, model=self.model, n_genes=self.n_genes, columns=self.columns,
            outputs=self.outputs, n_labels=n_labels, label_weight=label_weight,
        ), cfg.sharpen, cfg.tb)
        self._compile()

    def _compile(self) -> None:
        """Bind the static pieces to the module-level step functions and jit them."""
        rep, bsh = self._rep, self._bsh
        self.init_fn = jax.jit(
            functools.partial(init_state, model=self.model, tx=self.tx, width=self.width),
            out_shardings=rep,  # every process builds the same replicated state
        )
        self.step_fn = jax.jit(
            functools.partial(train_step, loss_fn=self.loss_fn, tx=self.tx),
            in_shardings=(rep, bsh, rep), out_shardings=(rep, rep), donate_argnums=0,
        )
        self.epoch_fn = jax.jit(
            functools.partial(train_epoch, loss_fn=self.loss_fn, tx=self.tx, batch_sharding=bsh),
            in_shardings=(rep, rep, rep, rep), out_shardings=(rep, rep), donate_argnums=0,
        )
        self.sse_fn = jax.jit(
            functools.partial(eval_sse, model=self.model, n_genes=self.n_genes,
                              n_labels=self.n_labels, outputs=self.outputs,
                              constant_value=self.constant_value),
            in_shardings=(rep, bsh, rep, bsh), out_shardings=rep,
        )
        self.stats_fn = jax.jit(selection_stats)
        self.resolve_fn = jax.jit(resolve_collisions)

    def init_state(self, seed: int | None = None, attempt: int = 0) -> TrainState:
        """Fresh replicated state of ``attempt`` for ``seed`` (default: the trainer's)."""
        keys = random_streams(self.seed if seed is None else seed, attempt)
        return self.init_fn(keys, self.mask)

    def place(self, state: TrainState) -> TrainState:
        """``state`` (e.g. read from a checkpoint) replicated over the mesh."""
        return jax.jit(lambda st: st, out_shardings=self._rep)(state)

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


def eval_chunk(n: int, n_devices: int, d: int = 0, cap: int = 2048) -> int:
    """Rows per evaluation call on ``d`` columns, a multiple of the device count.

    At most ``cap``; fewer on many columns (:func:`~genepanel.data.block_rows`: 279 rows
    at 30,000 genes), since each call holds a few ``[rows, d]`` float32 arrays.
    """
    c = min(block_rows(d, cap), max(n, 1))
    return ((c + n_devices - 1) // n_devices) * n_devices


#: Above this many reconstructed genes the default minibatch is at most
#: :data:`WIDE_BATCH` rows (see :func:`default_batch_size`).
WIDE_GENES = 10_000
WIDE_BATCH = 128


def default_batch_size(n_train: int, n_out: int = 0) -> int:
    """``min(256, max(16, n_train // 16))``: at least 16 minibatches per epoch when small.

    When the decoder reconstructs more than :data:`WIDE_GENES` genes (``n_out``) the cap
    is :data:`WIDE_BATCH`: there the decoder's ``6 · batch · k · d`` FLOPs dominate a
    step, so on a CPU the step time is nearly proportional to the batch, while the
    annealing is counted in steps (100,000 × 30,000 streamed, k = 200, before the faster
    reads: 0.47 CPU-s a step at 256, 0.27 at 128; on 5,000 × 5,000 planted modules
    batch 128 found 47 of 50 modules, the default 225 46; ``benchmarks/scale.md``).
    """
    cap = WIDE_BATCH if n_out > WIDE_GENES else 256
    return min(cap, max(16, n_train // 16))


def epochs_for(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """The annealing length and epoch cap ``E``: ``max_epochs``, or ``anneal_steps`` worth."""
    if cfg.max_epochs is not None:
        return cfg.max_epochs
    return max(1, -(-cfg.anneal_steps // steps_per_epoch))


def effective_batch_size(
    requested: int | None, n_train: int, n_devices: int, n_out: int = 0
) -> int:
    """The global minibatch size, a multiple of the device count.

    ``requested`` (default: :func:`default_batch_size` for ``n_out`` reconstructed
    genes), or all training rows when there are fewer.
    """
    if requested is None:
        requested = max(n_devices,
                        default_batch_size(n_train, n_out) // n_devices * n_devices)
    if requested <= n_train:
        check_batch_size(requested, n_devices)
        return requested
    b = (n_train // n_devices) * n_devices
    if b < n_devices:
        check_batch_size(n_train, n_devices)
    return b


# --------------------------------------------------------------------------- checkpoints

#: Checkpoint layout: 2 = a :class:`TrainState` with named random streams (genepanel
#: after 0.1.x). Checkpoints without it were written by 0.1.x and cannot be continued.
CHECKPOINT_LAYOUT = 2


def _keys_as_data(state: TrainState) -> TrainState:
    return state.replace(keys=jax.tree.map(jax.random.key_data, state.keys))


def save_checkpoint(path: Path, state: TrainState, meta: dict[str, Any]) -> None:
    """Write ``state`` and ``meta`` to ``path`` atomically (msgpack)."""
    host = jax.device_get(_keys_as_data(state))
    payload = {"state": flax.serialization.to_state_dict(host),
               "meta": {**meta, "layout": CHECKPOINT_LAYOUT}}
    with atomic_write(path, "wb") as fh:
        fh.write(flax.serialization.msgpack_serialize(payload))


def check_checkpoint_layout(payload: Any, path: Path) -> None:
    """Refuse, in one line, a checkpoint written by an older layout (genepanel 0.1.x)."""
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("layout") != CHECKPOINT_LAYOUT:
        msg = (f"--resume: the checkpoint {path} was written by an older genepanel (0.1.x, "
               "before the named random streams) and cannot be continued; rerun without "
               "--resume (with --overwrite to replace the interrupted run)")
        raise DataError(msg)


def load_checkpoint(path: Path, template: TrainState) -> tuple[TrainState, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``template``."""
    payload = flax.serialization.msgpack_restore(path.read_bytes())
    check_checkpoint_layout(payload, path)
    host = jax.device_get(_keys_as_data(template))
    state = flax.serialization.from_state_dict(host, payload["state"])
    keys = jax.tree.map(jax.random.wrap_key_data, state.keys)
    return state.replace(keys=keys), payload["meta"]


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


@dataclass
class _Plan:
    """What stays fixed during one :func:`fit` call: minibatches, data placement, evaluation."""

    batch: int
    steps: int
    chunk: int
    shuffle_block: int
    X: jax.Array | None  # the training matrix on the device (None: streamed)

    @property
    def on_device(self) -> bool:
        return self.X is not None


def _plan(trainer: Trainer, train: RowSource, val: RowSource | None) -> _Plan:
    batch = effective_batch_size(trainer.cfg.batch_size, train.n, trainer.n_devices,
                                 trainer.n_out - trainer.n_labels)
    on_device = train.dense is not None and jax.process_count() == 1
    return _Plan(
        batch=batch,
        steps=train.n // batch,
        chunk=eval_chunk(val.n if val is not None else 1, trainer.n_devices, trainer.d),
        # Rows on disk are shuffled in contiguous blocks (8 per minibatch) to keep reads long.
        shuffle_block=max(1, batch // 8) if train.data.is_backed else 1,
        X=jax.device_put(train.dense, trainer._rep) if on_device else None,
    )


@dataclass
class _Progress:
    """Where a run stands, besides its :class:`TrainState` (what a checkpoint's meta holds)."""

    seed: int
    max_epochs: int
    attempt: int = 0
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    collisions: int = 0
    converged: bool = False
    stop_epoch: int | None = None

    def meta(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "epoch": self.epoch, "history": self.history,
                "collisions": self.collisions, "max_epochs": self.max_epochs}

    def retry(self) -> None:
        """Start the next attempt from scratch with twice the epochs."""
        self.attempt, self.epoch, self.max_epochs = self.attempt + 1, 0, 2 * self.max_epochs


@dataclass
class _Control:
    """Checkpoints, stop signals and the testing interrupt, checked between epochs."""

    checkpoint: Path | None
    every: int
    stop: dict[str, Any]  # the flag of :func:`_stop_signals`
    stop_after_epochs: int | None

    def save(self, state: TrainState, progress: _Progress) -> None:
        if self.checkpoint is not None and jax.process_index() == 0:
            save_checkpoint(self.checkpoint, state, progress.meta())

    def between_epochs(self, state: TrainState, progress: _Progress) -> None:
        """Checkpoint when due; on a signal (or the testing cap) checkpoint and raise."""
        if self.every and progress.epoch % self.every == 0:
            self.save(state, progress)
        cap = self.stop_after_epochs
        if self.stop["signal"] is None and (cap is None or len(progress.history) < cap):
            return
        self.save(state, progress)
        where = f"; resume with --resume ({self.checkpoint})" if self.checkpoint else ""
        msg = f"interrupted after epoch {progress.epoch}{where}"
        raise Interrupted(msg, self.stop["signal"])


def _start(
    trainer: Trainer, seed: int, steps: int, checkpoint: Path | None
) -> tuple[TrainState, _Progress]:
    """Fresh state, or the state and progress in ``checkpoint`` when it exists."""
    state = trainer.init_state(seed, 0)
    progress = _Progress(seed=seed, max_epochs=epochs_for(trainer.cfg, steps))
    if checkpoint is not None and checkpoint.exists():
        state, meta = load_checkpoint(checkpoint, state)
        state = trainer.place(state)
        progress = _Progress(seed=seed, max_epochs=meta["max_epochs"], attempt=meta["attempt"],
                             epoch=meta["epoch"], history=meta["history"],
                             collisions=meta["collisions"])
    return state, progress


def _train_epoch(
    trainer: Trainer, state: TrainState, plan: _Plan, train: RowSource,
    order: np.ndarray, temp: np.ndarray,
) -> tuple[TrainState, jax.Array]:
    """One pass over the minibatches ``order`` ``[steps, batch]``; the mean loss."""
    if plan.on_device:
        return trainer.epoch_fn(state, plan.X, order.astype(np.int32), temp)
    losses = []
    for xb in _prefetch(trainer.global_batch(train, p) for p in order):
        state, loss = trainer.step_fn(state, xb, temp)
        losses.append(loss)
    return state, jnp.mean(jnp.stack(losses))


def _end_of_epoch(
    trainer: Trainer, state: TrainState, plan: _Plan, val: RowSource | None, temp: float,
) -> tuple[TrainState, dict[str, float]]:
    """Resolve collisions, then measure the selection (and the validation rows)."""
    thr = jnp.float32(trainer.cfg.collision_threshold)
    late = jnp.bool_(exclude_held_genes(temp, trainer.cfg.tb))
    logits, n_coll = trainer.resolve_fn(state.params["selector"]["logits"], thr, late)
    state = state.replace(params=with_logits(state.params, logits))
    mean_max, top, _ = trainer.selection(state.params)
    metrics = (trainer.evaluate(state.params, val, top, plan.chunk)
               if val is not None and val.n else {})
    record = {
        "mean_max_prob": mean_max,
        "val_loss": metrics.get("loss", float("nan")),
        "collisions": int(n_coll),
        "unique_genes": len(np.unique(top)),
    }
    if "accuracy" in metrics:
        record["val_accuracy"] = metrics["accuracy"]
    return state, record


def _run_attempt(
    trainer: Trainer, state: TrainState, plan: _Plan, data: tuple[RowSource, RowSource | None],
    progress: _Progress, control: _Control,
    on_epoch: Callable[[dict[str, float]], None] | None,
) -> TrainState:
    """Epochs of the current attempt until convergence or its epoch cap."""
    cfg, (train, val) = trainer.cfg, data
    # The row-order stream of this attempt; ``state.keys`` holds the same streams.
    rows = key_words(random_streams(progress.seed, progress.attempt).rows)
    while progress.epoch < progress.max_epochs:
        t_epoch = time.perf_counter()
        temp = temperature(progress.epoch, cfg.t0, cfg.tb, progress.max_epochs)
        rng = row_order_rng(rows, progress.epoch)
        order = epoch_order(train.n, rng, block=plan.shuffle_block)
        order = order[: plan.steps * plan.batch].reshape(plan.steps, plan.batch)
        state, loss = _train_epoch(trainer, state, plan, train, order, temp)
        state, measured = _end_of_epoch(trainer, state, plan, val, float(temp))
        record = {"epoch": progress.epoch + 1, "epochs": progress.max_epochs,
                  "temperature": float(temp), "mean_max_prob": measured.pop("mean_max_prob"),
                  "train_loss": float(loss), "val_loss": measured.pop("val_loss"),
                  "collisions": measured.pop("collisions"),
                  "unique_genes": measured.pop("unique_genes"),
                  "seconds": time.perf_counter() - t_epoch, **measured}
        progress.history.append(record)
        progress.collisions += record["collisions"]
        progress.epoch += 1
        if on_epoch is not None:
            on_epoch(record)
        if record["mean_max_prob"] > cfg.stop_threshold and record["collisions"] == 0:
            progress.converged, progress.stop_epoch = True, progress.epoch
            return state
        control.between_epochs(state, progress)
    return state


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

    ``seed`` (default: the trainer's) seeds the random streams (:func:`random_streams`);
    changing it reuses the compiled step functions, and ``trainer`` is left unchanged.
    ``stop_after_epochs`` (testing aid) interrupts the run after that many epochs, as a
    SIGTERM would, leaving a checkpoint to resume from.
    """
    seed = trainer.seed if seed is None else seed
    cfg = trainer.cfg
    plan = _plan(trainer, train, val)
    state, progress = _start(trainer, seed, plan.steps, checkpoint if resume else None)
    t_start = time.perf_counter()
    with _stop_signals() as stop:
        control = _Control(checkpoint, cfg.checkpoint_every, stop, stop_after_epochs)
        while True:
            state = _run_attempt(trainer, state, plan, (train, val), progress, control, on_epoch)
            done = progress.converged or not cfg.retry_unconverged
            if done or progress.attempt >= cfg.max_retries:
                break
            progress.retry()
            state = trainer.init_state(seed, progress.attempt)
            if on_epoch is not None:
                on_epoch({"restart": progress.attempt, "max_epochs": progress.max_epochs})
    return _result(trainer, state, plan, progress, time.perf_counter() - t_start)


def _result(
    trainer: Trainer, state: TrainState, plan: _Plan, progress: _Progress, seconds: float
) -> FitResult:
    compilations = {
        "epoch": trainer.epoch_fn._cache_size(),
        "step": trainer.step_fn._cache_size(),
        "eval": trainer.sse_fn._cache_size(),
    }
    return FitResult(
        params=trainer.full_params(state.params),
        history=progress.history,
        converged=progress.converged,
        stop_epoch=progress.stop_epoch,
        epochs_run=len(progress.history),
        collisions=progress.collisions,
        attempts=progress.attempt + 1,
        data_placement="device" if plan.on_device else "streamed",
        batch_size=plan.batch,
        steps_per_epoch=plan.steps,
        n_devices=trainer.n_devices,
        compilations=compilations,
        seconds=seconds,
    )
