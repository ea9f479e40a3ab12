r"""Fused CPU kernels for the coupling MLPs: one autograd node per ReLU MLP, and the measured choice.

Three ways to run a float32 ReLU MLP on the CPU, chosen per MLP by the ``kernels`` setting
(:func:`select`):

- ``"native"``: :mod:`sesamo_bench.core.native`, C compiled on first use for this CPU. Each thread
  carries tiles of 64 rows through all layers, forward and backward, with register-blocked
  products blocked for the machine's register file (AVX-512: 32 registers of 16 floats; AVX2/FMA:
  16 registers of 8 floats); the hidden activations are written once and read once.
- ``"onednn"``: PyTorch's oneDNN operators per layer (``mkldnn::_linear_pointwise``, bias and ReLU
  fused into the product; :class:`ReLUMLPFunction`):

  - forward: ``h_{k+1} = relu(h_k W_k^T + b_k)`` by ``_linear_pointwise``; the hidden activations
    are saved, nothing else;
  - backward, layer by layer from the top: the input gradient ``g W_k`` by ``_linear_pointwise``
    and the ReLU mask applied to it in place from the saved output, then the weight and bias
    gradients ``g^T h_k`` and ``sum_n g`` by oneDNN's inner-product backward (one call for both;
    MKL's ``mm`` and a sum for layers with fewer than :data:`IP_MIN_WIDTH` outputs).
- ``"aten"``: the plain PyTorch module (``addmm`` and an in-place ``relu_``).

``"auto"`` decides by measurement, not by assumption (:func:`choose`): on first use of an MLP
shape it times every path that runs here, forward and backward (forward alone under ``no_grad``),
on random data of that shape, interleaved, within about :data:`MEASURE_BUDGET_S` seconds, and takes
the fastest. Which path wins depends on the CPU: on AVX-512 machines the native kernels were
0.68-0.75x oneDNN's time; on an AVX2-only AMD EPYC the plain module is as fast as either at small
batches. The decision is kept for the process and cached on disk beside the compiled kernels
(``kernel-choices.json`` in :func:`sesamo_bench.core.native.cache_dir`), keyed by the CPU's model and
feature flags, the torch version, the native build, the dtype, the layer sizes, the batch size
class (the nearest power of two) and the grad mode, so a machine decides once and every later run
on it takes the same path (a run's numbers do not depend on timing noise). The thread count is not
part of the key: the native kernels sum in an order fixed by the batch alone (and the plain and
oneDNN paths gave the same numbers with one and two threads in ``tests/test_cluster.py``), so a
seed gives the same numbers with any number of threads on one machine, which a per-thread-count
decision would break (a job with one thread and a local run with two would take different
paths). A decision records the thread count it was timed with. Another machine may decide differently, and the float32
rounding of the paths differs: pin ``kernels=`` where numbers must agree bit for bit across
machines.
A decision timed on a busy machine can be noisy: ``sesamo-bench perf`` times every shape it runs
anew and replaces the cached decisions (:func:`remeasure`); deleting the file makes every shape be
timed again on first use. ``torch.compile`` is not among the candidates: compiling one MLP takes
seconds, beyond the budget; ``sesamo-bench perf --sections compile`` measures it. After
:func:`track`, :func:`tracked` lists the decisions a run used (a run's provenance, which ``show``
prints; ``perf`` prints them too).

Both fused paths equal the plain ``nn.Sequential`` forward and backward up to float32 rounding
(summation order differs; checked in ``tests/test_kernels.py`` against autograd of the plain
module). First-order only; float32 on CPU only.

:func:`available` probes the oneDNN operators once (PyTorch builds without oneDNN, or a future
release that renames them, fall back), :func:`sesamo_bench.core.native.library` the native build.
Inside ``torch.compile`` the plain path is traced instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import threading
import time

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import native
from ..errors import ConfigError

#: weight gradients of layers with at least this many outputs go through oneDNN's inner-product
#: backward; MKL's ``mm`` below. Measured at batch 8192, 2 threads, in microseconds (mm / oneDNN,
#: the latter with its two layout conversions): 100 x 63 weights 974 / 473, 100 x 40 521 / 392,
#: 64 x 64 467 / 336; 63 x 100 899 / 973, 48 x 100 653 / 904, 40 x 40 238 / 223
IP_MIN_WIDTH = 64
#: the kernel choices of the coupling MLPs (``--set kernels=...``)
KERNELS = ("auto", "native", "onednn", "aten")

#: the fused paths and the plain module, in the order :func:`choose` times them
PATHS = ("native", "onednn", "aten")
#: about how long :func:`choose` spends timing the paths of one MLP shape (seconds)
MEASURE_BUDGET_S = 1.0
#: rounds of :func:`choose`'s interleaved timing: at least (within the budget) and at most
MEASURE_ROUNDS = (3, 9)
#: file of the cached decisions, in :func:`sesamo_bench.core.native.cache_dir`
CHOICES_FILE = "kernel-choices.json"


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether this PyTorch build runs the oneDNN MLP kernels correctly (probed once)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        f32 = dict(generator=gen, dtype=torch.float32)
        x = torch.randn(5, 3, **f32)
        w, b = torch.randn(4, 3, **f32), torch.randn(4, **f32)
        ref = torch.relu(torch.addmm(b, x, w.t()))
        out = torch.ops.mkldnn._linear_pointwise(x, w, b, "relu", [], "")
        g = torch.randn(5, 4, **f32)
        gw, gb = torch.ops.aten.mkldnn_linear_backward_weights(g.to_mkldnn(), x.to_mkldnn(), w.to_mkldnn(), True)
        return (torch.allclose(out, ref, atol=1e-5) and torch.allclose(gw.to_dense(), g.t() @ x, atol=1e-5)
                and torch.allclose(gb.to_dense(), g.sum(0), atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Let glibc's ``malloc`` keep the memory a training step frees, for the next step (Linux).

    A step allocates and frees tens of MB of activations. With glibc's defaults the blocks above
    its (adaptive) mmap threshold go back to the kernel when freed, or the heap top is trimmed,
    and the next step faults the same pages in again, zero-filled: about 4000 page faults and
    several ms per step of the GMM paper preset on 2 cores (its step time falls by a fifth when
    they stop). Called when a CPU run is built; sets the process's mmap threshold to 32 MB
    (glibc's maximum) and the trim threshold to 1 GB. The resident memory then stays at its peak
    for the life of the process. Returns whether the settings were applied (not on other C
    libraries or systems).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc <malloc.h>
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def check(name: str) -> str:
    """Validate a ``kernels`` setting (raises :class:`ConfigError`)."""
    if name not in KERNELS:
        raise ConfigError(f"kernels must be one of {', '.join(KERNELS)}; got {name!r}")
    if name == "onednn" and not available():
        raise ConfigError("kernels 'onednn': this PyTorch build has no working oneDNN linear operators; "
                          "use kernels=auto or aten")
    if name == "native" and native.library() is None:
        raise ConfigError(f"kernels 'native' cannot run here ({native.unavailable_reason()}); "
                          "use kernels=auto, onednn or aten")
    return name


def select(kernels: str, x: Tensor, relu: bool, sizes: tuple[int, ...]) -> str | None:
    """The fused kernels (``"native"`` or ``"onednn"``) an MLP with these settings and layer
    ``sizes`` ``(n_in, hidden..., n_out)`` runs on ``x``, or ``None`` for the plain module.

    ``"auto"`` takes what :func:`choose` measured fastest for this shape, batch size class and grad
    mode."""
    if kernels == "aten" or not relu or x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    if torch.compiler.is_compiling():  # compiled code uses the compiler's kernels
        return None
    if kernels == "auto":
        fast = (sizes, x.shape[0], torch.is_grad_enabled(), torch.get_num_threads())
        hit = _fast.get(fast)  # a step's MLPs look up the same few keys: skip choose()'s arithmetic
        if hit is None:
            c = choose(sizes, fast[1], grad=fast[2], threads=fast[3])
            hit = _fast[fast] = (c.path, (c.sizes, c.batch, c.grad))
        _used[hit[1]] = None
        return None if hit[0] == "aten" else hit[0]
    if kernels == "native" and native.library() is not None:
        return "native"
    return "onednn" if available() else None


def resolve(kernels: str, device: str | torch.device) -> str:
    """What the float32 ReLU MLPs of a run with this ``kernels`` setting run on ``device``:
    ``"native"``, ``"onednn"`` or ``"aten"``; ``"auto"`` on a CPU, where :func:`choose` decides per
    MLP shape when the MLP first runs (:func:`tracked` then says what it chose)."""
    if torch.device(device).type != "cpu" or kernels == "aten":
        return "aten"
    if kernels == "auto":
        return "auto"
    if kernels == "native" and native.library() is not None:
        return "native"
    return "onednn" if available() else "aten"


# ---------------------------------------------------------------------------------------------
# the measured choice of kernels=auto
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Choice:
    """What :func:`choose` decided for one MLP shape.

    Attributes:
        path: ``"native"``, ``"onednn"`` or ``"aten"``.
        sizes: the layer sizes ``(n_in, hidden..., n_out)``.
        batch: the batch size class (a power of two) the paths were timed at.
        grad: timed forward and backward (``True``) or forward alone.
        threads: torch's thread count when the paths were timed (not part of the decision's key).
        times_ms: the shortest time of each path that was timed, in milliseconds.
        source: ``"measured"`` in this process, ``"cached"`` from an earlier one, or
            ``"only"`` when one path runs here.
        loadavg: the machine's 1-minute load average when the paths were timed (a decision
            measured on a busy machine can be redone: :func:`remeasure`, ``sesamo-bench perf``).
    """

    path: str
    sizes: tuple[int, ...]
    batch: int
    grad: bool
    threads: int
    times_ms: dict[str, float]
    source: str
    loadavg: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sizes": list(self.sizes), "batch": self.batch, "grad": self.grad,
                "threads": self.threads, "times_ms": dict(self.times_ms), "source": self.source,
                "loadavg": self.loadavg}

    def describe(self) -> str:
        """One line (:func:`describe`)."""
        return describe(self.to_dict())


def describe(choice: dict[str, Any]) -> str:
    """A decision as stored (:meth:`Choice.to_dict`) in one line:
    ``1x40x40x2 batch 1024 train 2 threads: native 1.05 ms, aten 1.09 ms -> native (measured)``.

    Raises ``TypeError``, ``ValueError`` or ``AttributeError`` for a dictionary that is not one."""
    times = ", ".join(f"{k} {float(v):.3g} ms" for k, v in (choice.get("times_ms") or {}).items())
    threads = int(choice["threads"])
    return (f"{'x'.join(str(int(d)) for d in choice['sizes'])} batch {choice['batch']} "
            f"{'train' if choice.get('grad') else 'infer'} {threads} thread{'s' if threads != 1 else ''}: "
            f"{times or '-'} -> {choice['path']} ({choice.get('source')})")


_lock = threading.Lock()
_fresh = [False]  # remeasure(): measure even where the cache has a decision
_choices: dict[tuple, Choice] = {}  # this process's decisions, by (sizes, batch class, grad)
_used: dict[tuple, None] = {}  # the keys looked up since :func:`track`, in order
_fast: dict[tuple, tuple[str, tuple]] = {}  # select()'s (sizes, batch, grad, threads) -> (path, decision key)


def batch_class(n: int) -> int:
    """The power of two nearest to ``n`` (geometrically): decisions are shared within a class."""
    return 1 << max(0, round(math.log2(max(1, n))))


def candidates() -> tuple[str, ...]:
    """The paths that run here: ``native`` where it builds, ``onednn`` where it works, ``aten``."""
    return tuple(p for p in PATHS if p == "aten" or (p == "native" and native.library() is not None)
                 or (p == "onednn" and available()))


def choose(sizes: tuple[int, ...], batch: int, *, grad: bool = True, threads: int | None = None) -> Choice:
    """The fastest path for a float32 ReLU MLP of layer ``sizes`` at about ``batch`` rows.

    Looked up in this process's decisions, then in the on-disk cache (:data:`CHOICES_FILE`), and
    otherwise measured (:func:`measure`) and cached. Another process deciding the same key at the
    same time waits for the first one's result (a file lock), so concurrent workers agree.
    """
    threads = threads or torch.get_num_threads()
    key = (tuple(int(s) for s in sizes), batch_class(batch), bool(grad))
    got = _choices.get(key)
    if got is None:
        with _lock:
            got = _choices.get(key)
            if got is None:
                got = _decide(key, int(threads))
                _choices[key] = got
    _used[key] = None
    return got


def _decide(key: tuple, threads: int) -> Choice:
    sizes, batch, grad = key
    paths = candidates()
    if len(paths) == 1:
        return Choice(paths[0], sizes, batch, grad, threads, {}, "only")
    disk_key = _disk_key(key)
    with _file_lock() as cache:
        if cache is not None and not _fresh[0]:
            entry = _read_cache(cache).get(disk_key)
            if isinstance(entry, dict) and entry.get("path") in paths and isinstance(entry.get("times_ms"), dict):
                times = {k: float(entry["times_ms"][k]) for k in PATHS
                         if isinstance(entry["times_ms"].get(k), (int, float))}
                load = entry.get("loadavg")
                timed = entry.get("threads")
                return Choice(entry["path"], sizes, batch, grad, int(timed) if isinstance(timed, int) else threads,
                              times, "cached",
                              float(load) if isinstance(load, (int, float)) else None)
        times = measure(sizes, batch, paths, grad=grad)
        best = min(times, key=times.get)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        choice = Choice(best, sizes, batch, grad, threads, times, "measured", load)
        if cache is not None:
            _write_cache(cache, disk_key, choice)
        return choice


def measure(sizes: tuple[int, ...], batch: int, paths: tuple[str, ...] = PATHS, *, grad: bool = True,
            budget_s: float = MEASURE_BUDGET_S, rounds: tuple[int, int] = MEASURE_ROUNDS) -> dict[str, float]:
    """Shortest time (ms) of each path on an MLP of ``sizes`` at ``batch`` rows: forward and
    backward with ``grad``, forward alone under ``no_grad`` otherwise.

    The paths run in turn, once untimed, then in interleaved rounds until ``budget_s`` is spent
    (at least ``rounds[0]``, at most ``rounds[1]`` rounds); random data from a private generator,
    so the global random state is untouched.
    """
    gen = torch.Generator().manual_seed(0)
    f32 = dict(generator=gen, dtype=torch.float32)
    ws = [(torch.randn(o, i, **f32) / i**0.5).requires_grad_(grad) for i, o in zip(sizes, sizes[1:])]
    bs = [(0.1 * torch.randn(o, **f32)).requires_grad_(grad) for o in sizes[1:]]
    x, g = torch.randn(batch, sizes[0], **f32), torch.randn(batch, sizes[-1], **f32)

    def run(path: str) -> None:
        xx = x.detach().requires_grad_(grad)
        out = _plain_mlp(xx, ws, bs) if path == "aten" else relu_mlp(xx, ws, bs, kernels=path)
        if grad:
            out.backward(g)
            for t in (*ws, *bs):
                t.grad = None

    best = {p: math.inf for p in paths}
    with torch.inference_mode(False), torch.set_grad_enabled(grad):
        for p in paths:
            run(p)
        start = time.perf_counter()
        for r in range(rounds[1]):
            for p in paths:
                t = time.perf_counter()
                run(p)
                best[p] = min(best[p], time.perf_counter() - t)
            if r + 1 >= rounds[0] and time.perf_counter() - start > budget_s:
                break
    return {p: 1e3 * t for p, t in best.items()}


def _plain_mlp(x: Tensor, weights: list[Tensor], biases: list[Tensor]) -> Tensor:
    """The ``aten`` path (what :class:`sesamo_bench.core.flows.MLP` runs when no fused kernel is taken)."""
    last = len(weights) - 1
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = torch.addmm(b, x, w.t())
        if i < last:
            x = x.relu_()
    return x


def forget() -> None:
    """Drop this process's decisions (the on-disk cache stays): the next lookups read it again."""
    with _lock:
        _choices.clear()
        _fast.clear()


def remeasure(on: bool = True) -> None:
    """From now on, time every MLP shape anew instead of reading the cached decisions (and cache
    the new ones); ``sesamo-bench perf`` does this, so that a decision made on a busy machine is
    redone when the machine is measured."""
    _fresh[0] = on
    forget()


def track() -> None:
    """Start collecting the decisions that MLPs look up (a run's); :func:`tracked` lists them."""
    _used.clear()


def tracked() -> list[Choice]:
    """The decisions of ``kernels=auto`` looked up since :func:`track`, in first-use order."""
    return [_choices[k] for k in list(_used) if k in _choices]


def summary(choices: list[Choice]) -> str:
    """The paths that the training MLPs (grad mode) took, ``+``-joined; the others' if none trained."""
    train = [c.path for c in choices if c.grad] or [c.path for c in choices]
    return "+".join(dict.fromkeys(train)) or "auto"


def _machine_key() -> str:
    lib = native.library()
    build = f"{native.march()} {native.blocking()}" if lib is not None else "no-native"
    return hashlib.sha256("\0".join([native._cpu_identity(), torch.__version__, build]).encode()).hexdigest()[:16]


def _disk_key(key: tuple) -> str:
    sizes, batch, grad = key
    return f"{_machine_key()}/float32/{'x'.join(map(str, sizes))}/b{batch}/{'train' if grad else 'infer'}"


@contextlib.contextmanager
def _file_lock() -> Iterator[Path | None]:
    """The cache file, locked for this process while inside; ``None`` where the cache folder is not
    ours alone or cannot be written (the decision is then kept in this process only)."""
    folder = native.cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if native._unsafe(folder):
            raise OSError("cache folder not private")
        fh = open(folder / (CHOICES_FILE + ".lock"), "a")
    except OSError:
        yield None
        return
    with fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        yield folder / CHOICES_FILE


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data["choices"] if isinstance(data, dict) and isinstance(data.get("choices"), dict) else {}
    except (OSError, ValueError, KeyError):
        return {}


def _write_cache(path: Path, key: str, choice: Choice) -> None:
    choices = _read_cache(path)
    choices[key] = {**choice.to_dict(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps({"version": 1, "choices": choices}, indent=1, sort_keys=True))
        os.replace(tmp, path)
    with contextlib.suppress(OSError):
        tmp.unlink()


def relu_mlp(x: Tensor, weights: list[Tensor], biases: list[Tensor], *, kernels: str = "onednn") -> Tensor:
    r"""``Linear -> ReLU -> ... -> Linear`` on ``x`` ``(N, n_in)`` with the fused ``kernels``
    (``"native"`` or ``"onednn"``, as :func:`select` gives them).

    ``weights[k]`` is ``(n_{k+1}, n_k)`` as in :class:`torch.nn.Linear`; returns ``(N, n_out)``.
    """
    params = [t for wb in zip(weights, biases) for t in wb]
    if kernels == "onednn":
        return ReLUMLPFunction.apply(x, *params)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params)):
        return NativeMLPFunction.apply(x, *params)
    return native.mlp_forward(x.contiguous(), [w.contiguous() for w in weights], list(biases), keep=False)[0]


class NativeMLPFunction(torch.autograd.Function):
    """Autograd node of :func:`relu_mlp` on the native kernels; arguments ``(x, W_0, b_0, W_1, b_1, ...)``."""

    @staticmethod
    def forward(ctx, x: Tensor, *params: Tensor) -> Tensor:  # noqa: D102
        x = x.contiguous()
        weights, biases = [w.contiguous() for w in params[0::2]], [b.contiguous() for b in params[1::2]]
        out, hidden = native.mlp_forward(x, weights, biases, keep=True)
        ctx.save_for_backward(x, *hidden, *weights)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # a second derivative raises instead of coming out zero
    def backward(ctx, g: Tensor):  # noqa: D102
        saved = ctx.saved_tensors
        n_layers = (len(saved) + 1) // 2
        x, hidden, weights = saved[0], list(saved[1:n_layers]), list(saved[n_layers:])
        gx, gws, gbs = native.mlp_backward(x, hidden, weights, g.contiguous(), input_grad=ctx.needs_input_grad[0])
        return (gx, *[t for wb in zip(gws, gbs) for t in wb])


class ReLUMLPFunction(torch.autograd.Function):
    """Autograd node of :func:`relu_mlp`; arguments ``(x, W_0, b_0, W_1, b_1, ...)``."""

    @staticmethod
    def forward(ctx, x: Tensor, *params: Tensor) -> Tensor:  # noqa: D102
        weights, biases = params[0::2], params[1::2]
        last = len(weights) - 1
        inputs = [x]
        h = x
        for k, (w, b) in enumerate(zip(weights, biases)):
            h = torch.ops.mkldnn._linear_pointwise(h, w, b, "relu" if k < last else "none", [], "")
            if k < last:
                inputs.append(h)
        ctx.save_for_backward(*inputs, *weights)
        return h

    @staticmethod
    def backward(ctx, g: Tensor):  # noqa: D102
        saved = ctx.saved_tensors
        n = len(saved) // 2
        inputs, weights = saved[:n], saved[n:]
        grads: list[Tensor | None] = [None] * (2 * n)
        gx = None
        g = g.contiguous()
        for k in reversed(range(n)):
            h, w = inputs[k], weights[k]
            # the input gradient and the ReLU mask first: the mask reads the saved activation h
            # into the cache, where the weight gradient then finds it
            g_below = None
            if k > 0 or ctx.needs_input_grad[0]:
                gin = torch.ops.mkldnn._linear_pointwise(g, w.t().contiguous(), None, "none", [], "")
                if k > 0:  # ReLU: pass the gradient where the saved output is positive (in place)
                    g_below = torch.ops.aten.threshold_backward.grad_input(gin, h, 0, grad_input=gin)
                else:
                    gx = gin
            if w.shape[0] >= IP_MIN_WIDTH:
                gw, gb = torch.ops.aten.mkldnn_linear_backward_weights(g.to_mkldnn(), h.to_mkldnn(), w.to_mkldnn(),
                                                                       True)
                grads[2 * k], grads[2 * k + 1] = gw.to_dense(), gb.to_dense()
            else:
                grads[2 * k], grads[2 * k + 1] = torch.mm(g.t(), h), g.sum(0)
            g = g_below
        return (gx, *grads)
