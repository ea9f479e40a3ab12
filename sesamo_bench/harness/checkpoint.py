r"""A run's training state on disk: ``checkpoint.pt``, written atomically, read safely, checksummed.

* **Written** through a temporary file of a fresh random name, created with ``O_EXCL |
  O_NOFOLLOW`` (a planted file or symbolic link of that name is never followed or overwritten),
  then ``os.replace``: a reader sees the old checkpoint or the new one, never half of one.
* **Read** with ``torch.load(weights_only=True)``: tensors and plain values only, a pickled
  object is refused, never run. A symbolic link or a directory in its place is refused.
* **Checked**: the keys and their types (:data:`CHECKPOINT_KEYS`), a SHA-256 over every value
  (:func:`state_digest`, stored in the file as ``digest``: a flipped bit or an edited tensor is
  found), finite weights, and (in :func:`check_fits`) that it was written by the same run: the
  configuration it holds must give the run id of the run that loads it (another seed, another
  target or other hyperparameters are refused).

Every refusal is a :class:`CheckpointError`; the runner reports it in one note and restarts the
run from step 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import StoreError


class CheckpointError(Exception):
    """A checkpoint file that cannot be used (empty, truncated, damaged, of another run)."""


#: keys every checkpoint holds, and their types
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "model": dict, "opt": dict, "sched": dict, "losses": list, "history": list, "step": int,
    "wall_s": (int, float), "rng": Tensor, "config": dict, "digest": str,
}


def plain(value: Any) -> Any:
    """``value`` as what ``torch.load(weights_only=True)`` accepts: tensors, dicts, lists, tuples,
    numbers, strings, booleans and None (numpy arrays become tensors, numpy scalars numbers)."""
    import numpy as np

    if isinstance(value, Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {(k if isinstance(k, (str, int)) else str(k)): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value) if type(value) in (list, tuple) else [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint")


def state_digest(state: dict[str, Any]) -> str:
    r"""SHA-256 over every value of a (plain) checkpoint state but its ``digest``: tensors by dtype,
    shape and bytes, containers in order (dicts by sorted key), scalars by ``repr`` (exact for
    floats). The same state gives the same digest before saving and after loading."""
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(v.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, dict):
            h.update(b"{")
            for k in sorted(v, key=repr):
                if k != "digest" or v is not state:
                    h.update(repr(k).encode() + b"=")
                    feed(v[k])
            h.update(b"}")
        elif isinstance(v, (list, tuple)):
            h.update(b"[" if isinstance(v, list) else b"(")
            for item in v:
                feed(item)
            h.update(b"]")
        else:
            h.update(repr(v).encode() + b";")

    feed(state)
    return h.hexdigest()


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    r"""Read ``checkpoint.pt`` safely (see the module docstring) and return its state.

    Raises:
        CheckpointError: the file is a link or a directory, empty, truncated, damaged, not a
            checkpoint, holds objects, does not match its checksum or holds non-finite weights.
    """
    path = Path(path)
    try:
        if path.is_symlink():
            raise CheckpointError(f"checkpoint {path} is a symbolic link, not a file the run wrote")
        if path.is_dir():
            raise CheckpointError(f"checkpoint {path} is a directory, not a file the run wrote")
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {path} is empty")
        state = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read it makes it unusable
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a sesamo-bench checkpoint")
    if "digest" not in state and isinstance(state.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} has no checksum (written by sesamo-bench 0.1, or not by it)")
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise CheckpointError(f"checkpoint {path} is not a sesamo-bench checkpoint (bad or missing '{key}')")
    if state["step"] < 0 or not all(isinstance(r, dict) for r in state["history"]):
        raise CheckpointError(f"checkpoint {path} is not a sesamo-bench checkpoint (bad 'step' or 'history')")
    if state_digest(state) != state["digest"]:
        raise CheckpointError(f"checkpoint {path} does not match its checksum (damaged or edited)")
    for name, t in state["model"].items():
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"checkpoint {path} holds non-finite weights ({name})")
    return state


def check_fits(state: dict[str, Any], config: dict[str, Any], where: str = "the checkpoint") -> None:
    r"""Refuse a checkpoint written by another run: its configuration must give the same run id as
    ``config`` (the loading run's :meth:`RunConfig.to_dict`; execution settings such as threads or
    device may differ).

    Raises:
        CheckpointError: naming the settings that differ.
    """
    from .store import run_id

    theirs = state.get("config")
    if not isinstance(theirs, dict):
        raise CheckpointError(f"{where} does not fit this run (it holds no configuration)")
    if run_id(theirs) == run_id(config):
        return
    from .config import EXECUTION_ONLY

    keys = sorted(k for k in set(theirs) | set(config) if k not in EXECUTION_ONLY and theirs.get(k) != config.get(k))
    shown = ", ".join(f"{k}={theirs.get(k)!r} (this run: {config.get(k)!r})" for k in keys[:3]) or "settings differ"
    raise CheckpointError(f"{where} does not fit this run: it was written by another run ({shown})")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    r"""Write ``state`` (made :func:`plain`, with its :func:`state_digest`) to ``path`` atomically.

    Raises:
        StoreError: the file cannot be written (disk full, read-only, a directory in the way).
    """
    payload = plain(state)
    payload.pop("digest", None)
    payload["digest"] = state_digest(payload)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # disk full, read-only (torch's writer raises RuntimeError)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [""])[0]
        raise StoreError(f"cannot write {path}: {reason}") from None


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of :func:`save_checkpoint` (or of earlier versions)."""
    return name == "checkpoint.tmp" or (name.startswith(".checkpoint.pt.") and name.endswith(".tmp"))
