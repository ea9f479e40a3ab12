r"""Train one run of a :class:`~sesamo_bench.harness.config.RunConfig`: the loop (:func:`fit`), its
checkpoint and resume glue, and the result (:func:`train`, :class:`Result`).

Building is :mod:`~sesamo_bench.harness.build`, evaluation :mod:`~sesamo_bench.harness.evaluate`,
one optimisation step :mod:`~sesamo_bench.harness.trainer`; their names are re-exported here, where
they lived before (for callers, and so that patching them here still reaches :func:`fit` and :func:`train`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..core import kernels
from .checkpoint import CheckpointError, check_fits, load_checkpoint, save_checkpoint
# the checkpoint's names lived here before harness.checkpoint (kept for callers of 0.2)
from .checkpoint import CHECKPOINT_KEYS as CHECKPOINT_KEYS, plain as plain
from .config import RunConfig
from .record import COLUMN_METRICS, RESULT_METRICS, Values
from ..errors import DivergedError
from ..core.methods import Method
from ..core.target import Target
# the names of building, evaluation and the step lived here before (train.py split by job, issue 28):
# fit and train call build, evaluate, support, Trainer, ... through this module's globals, so patching them
# here reaches those calls (a call inside build.py, evaluate.py or trainer.py looks up that module's own name)
from .build import (  # noqa: F401 - re-exported
    _DTYPES, _sizes, build, build_model, build_symmetry, build_target, check_exact, check_finite_action, check_model,
    check_flow_matching, check_objective, check_size, estimate_bytes, memory_limit, prepare, resolve_device,
    resolve_dtype, resolve_mlp_dtype, training_rows,
)
from .evaluate import (  # noqa: F401 - re-exported
    Evaluation, EvaluationStopped, _underflow, breaking_sign_fn, evaluate, heldout_nll, support,
)
from .trainer import Trainer, _seed_all, param_groups  # noqa: F401 - re-exported


class Interrupted(Exception):
    """Raised by :func:`train` when ``should_stop`` asks it to stop; a checkpoint was written."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"interrupted at step {step}")


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
class Result(Values):
    r"""What one run produced: its configuration, status, steps, training wall time, history, device
    and dtype, the kept samples and their log-weights, the method's own ``info``, and the final
    evaluation's numbers as attributes (``result.ess``, ``result.nll``, ...; declared once, on
    :class:`~sesamo_bench.harness.record.RunRecord`, :data:`~sesamo_bench.harness.record.RESULT_METRICS`)."""

    def __init__(self, config: RunConfig, status: str, steps: int, wall_s: float, *,
                 history: list[dict[str, float]] | None = None, samples: Tensor | None = None,
                 sample_log_w: Tensor | None = None, info: dict[str, Any] | None = None, device: str = "cpu",
                 dtype: str = "float32", error: str | None = None, **values: Any):
        self.config, self.status, self.steps, self.wall_s = config, status, steps, wall_s
        self.history = list(history or [])
        self.samples, self.sample_log_w, self.info = samples, sample_log_w, dict(info or {})
        self.device, self.dtype, self.error = device, dtype, error
        self.values = self.check(values, "Result")

    def metrics(self) -> dict[str, Any]:
        """The metrics column: every declared number (``None`` where not measured), then ``info``."""
        return {**{k: self.values.get(k) for k in RESULT_METRICS}, **self.info}

    def record(self) -> dict[str, Any]:
        """The columns of the run record that the result sets (status, steps, wall time, the
        numbers that are also columns, the metrics column)."""
        return {"status": self.status, "steps": self.steps, "wall_s": self.wall_s,
                **{k: self.values.get(k) for k in COLUMN_METRICS}, "metrics": self.metrics()}


_save_checkpoint = save_checkpoint


@dataclass
class Fit:
    """What :func:`fit` leaves: the last step, the training wall time, the history, the optimizer."""

    steps: int
    wall_s: float
    history: list[dict[str, float]]
    trainer: Trainer


def fit(model: Method, target: Target, settings: RunConfig, *,
        callbacks: Sequence[Callable[[dict[str, float]], None]] = (),
        progress: Callable[[int, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint: Path | None = None, state: dict[str, Any] | None = None) -> Fit:
    r"""Train ``model`` on ``target`` for ``settings.steps`` steps (the library's training loop).

    Touches no process-wide state but torch's global random generator, which sampling draws from
    (seed it first with :func:`torch.manual_seed` for reproducible numbers); thread count, seeding
    and the allocator are the caller's (the command line's workers set them, :func:`train`).

    Arguments:
        model: a :class:`~sesamo_bench.core.methods.Method` (on its device and dtype).
        target: the target it samples.
        settings: the training hyperparameters (a :class:`~sesamo_bench.harness.config.RunConfig`; see
            :func:`sesamo_bench.preset`).
        callbacks: called with each history row (``step``, ``loss``, ``ess``, ``log_z``, ``lr``,
            ``wall_s``, ``breaking_ratio`` where defined), every ``eval_every`` steps.
        progress: called after every step with ``(step, loss)``.
        should_stop: polled every step and between evaluation chunks; when it returns True a
            checkpoint is written and :class:`Interrupted` is raised.
        checkpoint: file for the training state (written every ``checkpoint_every`` steps, on
            interruption and at the end); ``None`` disables checkpoints.
        state: a checkpoint's contents (:func:`load_checkpoint`) to continue from.

    Returns:
        A :class:`Fit`.

    Raises:
        DivergedError: NaN/Inf in the loss, the weights or the evaluation's log-weights.
        CheckpointError: ``state`` does not fit the model.
    """
    cfg = settings
    device = next(model.parameters()).device
    trainer = Trainer(cfg, model, target, device)
    history: list[dict[str, float]] = []
    start_step, wall_before = 0, 0.0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            trainer.load_state_dict(state)
            torch.set_rng_state(state["rng"].cpu())
            if state.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except Exception as exc:  # noqa: BLE001 - shapes or keys of another model, a damaged state
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            where = f"checkpoint {checkpoint}" if checkpoint is not None else "the checkpoint"
            raise CheckpointError(f"{where} does not fit this run ({type(exc).__name__}: {first})") from None
        check_fits(state, cfg.to_dict(), f"checkpoint {checkpoint}" if checkpoint is not None else "the checkpoint")
        history = state["history"]
        start_step, wall_before = state["step"], float(state["wall_s"])

    def snapshot(step: int, wall: float) -> dict[str, Any]:
        return {"model": model.state_dict(), **trainer.state_dict(), "history": history, "step": step,
                "wall_s": wall, "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "config": cfg.to_dict()}

    t0 = time.perf_counter() - wall_before
    step = start_step
    saved = [start_step]  # step of the latest checkpoint written

    def save(step: int) -> None:
        if checkpoint is not None:
            save_checkpoint(checkpoint, snapshot(step, time.perf_counter() - t0))
            saved[0] = step
    for step in range(start_step + 1, cfg.steps + 1):
        lv = trainer.step(step)
        if progress is not None:
            progress(step, lv)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            for p in model.parameters():
                if not bool(torch.isfinite(p).all()):
                    raise DivergedError(step, "weights")
            try:
                ev = evaluate(model, target, cfg.eval_samples, should_stop=should_stop)
            except EvaluationStopped:
                # the model has moved past the last checkpoint and the evaluation drew part of its
                # samples: stop at that checkpoint, which resumes to the same numbers
                raise Interrupted(saved[0]) from None
            if not math.isfinite(ev.ess):
                raise DivergedError(step, "log-weights")
            row = {"step": step, "loss": lv, "ess": ev.ess, "log_z": ev.log_z, "lr": trainer.lr,
                   "wall_s": time.perf_counter() - t0}
            br = model.breaking_ratio()
            if br is not None:
                row["breaking_ratio"] = br
            history.append(row)
            for callback in callbacks:
                callback(row)
        # polled before the checkpoint is written: a run whose claim was taken over while it was
        # stopped (SIGSTOP) learns it here and writes nothing (should_stop raises)
        stop = should_stop is not None and should_stop()
        if stop or step % cfg.checkpoint_every == 0:
            save(step)
        if stop:
            raise Interrupted(step)
    train_wall = time.perf_counter() - t0
    if checkpoint is not None:
        save_checkpoint(checkpoint, snapshot(step, train_wall))
    return Fit(step, train_wall, history, trainer)


def train(cfg: RunConfig, *, checkpoint: Path | None = None, resume: bool = False,
          callback: Callable[[dict[str, float]], None] | None = None,
          should_stop: Callable[[], bool] | None = None,
          progress: Callable[[int, float], None] | None = None) -> Result:
    r"""Train one run of the benchmark to completion and evaluate it (what a worker runs).

    Sets the run's process policy first: its thread count (``cfg.threads``), the global seed and,
    on a CPU, glibc's memory retention; then :func:`build`, :func:`fit` and :func:`evaluate`.

    Arguments:
        cfg: the run.
        checkpoint: file for the training state; ``None`` disables checkpoints.
        resume: continue from ``checkpoint`` if it exists.
        callback: called with each history row (step, loss, ess, lr, wall_s, ...).
        should_stop: polled every step (see :func:`fit`).
        progress: called after every step with ``(step, loss)`` (for progress bars).

    Raises:
        DivergedError: NaN/Inf in the loss, the weights or the evaluation's log-weights.
        CheckpointError: the checkpoint cannot be loaded or does not fit the run.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_all(cfg.seed)
    target, model, device, dtype = build(cfg)
    if device.type == "cpu":
        kernels.keep_freed_memory()
    state = None
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=device)
    done = fit(model, target, cfg, callbacks=[callback] if callback is not None else [], progress=progress,
               should_stop=should_stop, checkpoint=checkpoint, state=state)
    step = done.steps
    try:
        ev = evaluate(model, target, cfg.final_samples, keep=cfg.save_samples, should_stop=should_stop,
                      sign_fn=breaking_sign_fn(cfg, model, target, device))
        if not math.isfinite(ev.ess):
            raise DivergedError(step, "log-weights")
        sup = support(model, target, cfg.final_samples, seed=cfg.seed, should_stop=should_stop)
    except EvaluationStopped:
        raise Interrupted(step) from None  # the checkpoint of the last step was just written
    ref_metrics = target.reference_metrics(ev.x) if ev.x is not None else {}
    held = heldout_nll(model, target) if target.offers_training_data() else {}
    if cfg.train_subset != "all":
        from ..analysis.states import state_metrics

        rows, trained_on = training_rows(cfg, target)
        held.update(train_rows=int(rows.shape[0]), **state_metrics(target, ev.x, ev.log_w, trained_on))
    exact_err = getattr(target, "breaking_ratio_error", None)
    return Result(
        config=cfg, status="finished", steps=step, wall_s=done.wall_s,
        ess=ev.ess, log_z=ev.log_z, log_z_err=ev.log_z_err, ess_path=ev.ess_path, outside_cell=ev.outside_cell,
        underflow=ev.underflow,
        breaking_ratio=model.breaking_ratio(),
        breaking_ratio_exact=target.breaking_ratio(),
        probabilities=model.probabilities(),
        probabilities_exact=target.mode_probabilities() if model.probabilities() is not None else None,
        log_z_exact=target.log_z(), ess_n=ev.ess_n, log_z_err_reliable=ev.log_z_err_reliable,
        breaking_ratio_is=ev.breaking_ratio_is, breaking_ratio_is_err=ev.breaking_ratio_is_err,
        breaking_ratio_exact_err=exact_err() if exact_err is not None else None, **sup, **ref_metrics, **held,
        device=str(device), dtype=str(dtype).replace("torch.", ""),
        history=done.history, samples=ev.x, sample_log_w=ev.log_w, info=model.info(),
    )
