r"""Metastable states of a particle target: the training subset of the equivariant-flow paper's
generalisation experiment and what a trained generator samples outside it.

Köhler, Klein and Noé (2020, Fig. 1) train an equivariant and a non-equivariant Boltzmann generator
on samples of one metastable state and ask which of them samples states absent from the training
data, telling the states apart after energy minimisation. Here a target that defines
``metastable_state`` (DW-4: the number of inner-well pairs at the local minimum,
:meth:`targets.dw4.DW4.metastable_state`) offers:

- ``train_subset = "one-state"``: the training split restricted to its most populated state
  (:func:`restrict`); the labels of the training file are computed once and cached beside the HMC
  splits (:mod:`sesamo_bench.analysis.samples`);
- for runs trained on such a subset, :func:`state_metrics`: the fraction of the model's saved
  samples (unweighted, up to :data:`STATE_SAMPLES`) in each state, the fraction in states absent
  from the training subset (``unseen_states``), its importance-weighted value, and the same
  fractions of the suite's held-out HMC split (the exact answer).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: what ``train_subset`` may be: every training row, or those of the most populated metastable state
SUBSETS = ("all", "one-state")
#: the model's saved samples whose states a run records (minimisation costs ~1 ms a configuration)
STATE_SAMPLES = 4000
#: bumped when the labelling changes
VERSION = 1


def offers_states(target) -> bool:
    return callable(getattr(target, "metastable_state", None))


def state_labels(target, y: Tensor, chunk: int = 20000) -> np.ndarray:
    """The metastable-state label ``(N,)`` of each configuration ``y`` ``(N, m)`` (not cached)."""
    with torch.enable_grad():  # the minimisation descends the energy's gradient
        out = [target.metastable_state(y[i:i + chunk]).cpu().numpy() for i in range(0, y.shape[0], chunk)]
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def training_states(target, data: Tensor) -> np.ndarray:
    """The state labels ``(M,)`` of the training split ``data``, cached by target, parameters and a
    hash of the rows."""
    from .samples import cache_dir

    digest = hashlib.sha256(np.ascontiguousarray(data.detach().double().cpu().numpy()).tobytes()).hexdigest()[:16]
    key = json.dumps({"target": target.name, "params": target.params(), "rows": digest, "version": VERSION},
                     sort_keys=True, default=str)
    path = cache_dir() / f"{target.name}-states-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npy"
    if path.is_file() and not path.is_symlink():
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (data.shape[0],):
                return arr
        except (OSError, ValueError):
            pass
    arr = state_labels(target, data.detach().double().cpu())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, arr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arr


def restrict(target, data: Tensor, subset: str) -> tuple[Tensor, list[int]]:
    """The rows of ``data`` in ``subset`` and the state labels they cover (``all``: every row; the
    labels are then not computed and ``[]`` is returned)."""
    if subset not in SUBSETS:
        raise ValueError(f"train_subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if subset == "all":
        return data, []
    labels = training_states(target, data)
    values, counts = np.unique(labels, return_counts=True)
    modal = int(values[counts.argmax()])
    keep = torch.as_tensor(labels == modal, device=data.device)
    return data[keep], [modal]


def fractions(labels: np.ndarray, n_states: int, weights: np.ndarray | None = None) -> list[float]:
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=float)
    total = w.sum()
    return [float(w[labels == k].sum() / total) if total > 0 else float("nan") for k in range(n_states)]


def state_metrics(target, samples: Tensor | None, log_w: Tensor | None, trained_on: list[int]) -> dict:
    """``state_fractions`` (model, unweighted), ``state_fractions_ref`` (held-out HMC split),
    ``unseen_states`` (model mass outside ``trained_on``), ``unseen_states_is`` (the same,
    importance-weighted) and ``unseen_states_ref`` (the exact mass outside it)."""
    keys = ("state_fractions", "state_fractions_ref", "unseen_states", "unseen_states_is", "unseen_states_ref")
    if samples is None or samples.shape[0] == 0 or not trained_on:
        return dict.fromkeys(keys)
    n = target.n_particles
    n_states = n * (n - 1) // 2 + 1
    y = samples[:STATE_SAMPLES].reshape(min(samples.shape[0], STATE_SAMPLES), -1).double().cpu()
    fine = torch.isfinite(y).all(1)
    lab = state_labels(target, y[fine])
    out = {"state_fractions": fractions(lab, n_states)}
    unseen = ~np.isin(lab, trained_on)
    out["unseen_states"] = float(unseen.mean()) if len(lab) else None
    if log_w is not None:
        lw = log_w[:STATE_SAMPLES].double().cpu()[fine].numpy()
        ok = np.isfinite(lw)
        w = np.exp(lw[ok] - lw[ok].max()) if ok.any() else np.zeros(0)
        out["unseen_states_is"] = float((w * unseen[ok]).sum() / w.sum()) if w.sum() > 0 else None
    else:
        out["unseen_states_is"] = None
    ref = target.training_data("test")
    rlab = training_states(target, ref)
    out["state_fractions_ref"] = fractions(rlab, n_states)
    out["unseen_states_ref"] = float((~np.isin(rlab, trained_on)).mean())
    return out
