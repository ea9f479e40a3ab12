r"""The native MLP kernels: ``mlp.c``, compiled on first use with the machine's C compiler.

``mlp.c`` runs the forward and backward pass of a float32 ReLU MLP with the batch cut into tiles
that each thread carries through all layers (see its header). It is compiled once per machine with
``cc -O3 -march=native -fopenmp`` (``$CC`` if set; ``$SESAMO_BENCH_MARCH`` replaces ``native``) into a cache folder,
``$SESAMO_BENCH_CACHE`` or ``$XDG_CACHE_HOME/sesamo-bench`` or ``~/.cache/sesamo-bench``, under a
name that hashes the source, the compiler, the flags and the CPU, so a cluster's nodes of different
CPUs sharing a home folder each build their own. The build takes about a second; the library runs
its threads in PyTorch's OpenMP runtime (the same ``libgomp``), as many as
``torch.get_num_threads()``.

:func:`library` builds, loads and probes it once per process against a float64 reference; it is
``None`` where there is no compiler or the build or the probe fails (:func:`unavailable_reason`
says why), and :mod:`sesamo_bench.core.kernels` then uses oneDNN or the plain PyTorch MLP.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("mlp.c")
#: ``-march`` of the build: ``native`` unless ``$SESAMO_BENCH_MARCH`` names another (``x86-64-v3``
#: builds the AVX2/FMA variant on an AVX-512 machine, to measure what an AVX2-only CPU gets)
MARCH_ENV = "SESAMO_BENCH_MARCH"
VECTOR = 16  # mlp.c's PAD: the kept activations are padded to a multiple of this many floats


def march() -> str:
    """The ``-march`` the kernels are built for (``native`` by default)."""
    value = os.environ.get(MARCH_ENV, "").strip() or "native"
    if not all(c.isalnum() or c in "-_." for c in value):
        raise RuntimeError(f"${MARCH_ENV} must name a -march value such as native or x86-64-v3; got {value!r}")
    return value


def flags() -> tuple[str, ...]:
    """The compiler flags of the build."""
    return ("-O3", f"-march={march()}", "-fopenmp", "-shared", "-fPIC")

_P = ctypes.c_void_p
_reason: list[str] = []


def padded(d: int) -> int:
    """Width of a kept hidden activation of ``d`` units (``d`` rounded up to a multiple of 16)."""
    return -(-d // VECTOR) * VECTOR


def cache_dir() -> Path:
    """Folder of the built libraries."""
    if os.environ.get("SESAMO_BENCH_CACHE"):
        return Path(os.environ["SESAMO_BENCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sesamo-bench"


def _cpu_identity() -> str:
    """Model and feature flags of this CPU: ``-march=native`` code is only reused on the same."""
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh.read().splitlines() if ln.split(":")[0].strip() in ("model name", "flags")]
        return "\n".join(dict.fromkeys(lines))  # first CPU's lines (the others repeat them)
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _build() -> Path:
    """Path of the compiled library, built into the cache folder if not there (raises ``RuntimeError``)."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set CC or install gcc)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"C compiler {cc!r} does not run: {e}") from None
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, *flags(), platform.machine(),
                                    _cpu_identity()]).encode()).hexdigest()[:16]
    folder = cache_dir()
    target = folder / f"mlp-{key}.so"
    if target.exists() and _verified(target):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    if _unsafe(folder):  # others could plant a library there: build into a private folder instead
        folder = Path(tempfile.mkdtemp(prefix="sesamo-bench-native-"))
        target = folder / target.name
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=folder)  # built aside, then renamed: atomic
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags(), "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["(no message)"]
            first = next((ln for ln in lines if "error" in ln), lines[-1])
            raise RuntimeError(f"{cc} failed to build {SOURCE.name}: {first.strip()}")
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        sums = _sums(target)
        with open(f"{sums}.tmp{os.getpid()}", "w") as fh:
            fh.write(digest + "\n")
        os.replace(f"{sums}.tmp{os.getpid()}", sums)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _sums(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")


def _unsafe(path: Path) -> str | None:
    """Why ``path`` may hold what another user wrote (None if only we, or root, can write it)."""
    try:
        st = path.stat()
    except OSError as exc:
        return str(exc)
    if st.st_uid not in (os.getuid(), 0):
        return f"{path} is owned by uid {st.st_uid}"
    if st.st_mode & 0o002:  # (group-writable is the norm with per-user groups, umask 002)
        return f"{path} is writable by every user"
    return None


def _verified(lib: Path) -> bool:
    """A cached library is loaded only if it and its folder are ours alone and its bytes match the
    sha256 recorded when it was built (a damaged or planted file is rebuilt instead)."""
    sums = _sums(lib)
    if _unsafe(lib.parent) or _unsafe(lib) or _unsafe(sums):
        return False
    try:
        expected = sums.read_text().strip()
        return hashlib.sha256(lib.read_bytes()).hexdigest() == expected
    except OSError:
        return False


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.sb_mlp_forward.argtypes = [ctypes.c_int64, ctypes.c_int, _P, _P, _P, _P, _P, _P, ctypes.c_int]
    lib.sb_mlp_backward.argtypes = [ctypes.c_int64, ctypes.c_int, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int]
    lib.sb_mlp_forward.restype = lib.sb_mlp_backward.restype = lib.sb_openmp.restype = ctypes.c_int
    lib.sb_blocking.restype = ctypes.c_char_p
    if not lib.sb_openmp():
        raise RuntimeError("built without OpenMP (single-threaded)")
    return lib


def _probe(lib: ctypes.CDLL) -> None:
    """One forward and backward of a small MLP against float64 autograd (raises ``RuntimeError``).

    Runs with gradients on whatever mode the first caller is in (``no_grad``, ``inference_mode``,
    or the forward of an autograd function).
    """
    with torch.inference_mode(False), torch.enable_grad():
        _compare_with_autograd(lib)


def _compare_with_autograd(lib: ctypes.CDLL) -> None:
    f32 = dict(generator=torch.Generator().manual_seed(0), dtype=torch.float32)  # whatever the default dtype
    dims = [3, 20, 17, 2]
    ws = [torch.randn(o, i, **f32) / i**0.5 for i, o in zip(dims, dims[1:])]
    bs = [torch.randn(o, **f32) for o in dims[1:]]
    x, gout = torch.randn(70, 3, **f32), torch.randn(70, 2, **f32)
    out, hidden = _forward(lib, x, ws, bs, keep=True)
    gx, gws, gbs = _backward(lib, x, hidden, ws, gout, input_grad=True)
    ref = [t.double().requires_grad_() for t in (x, *ws, *bs)]
    h = ref[0]
    for k, (w, b) in enumerate(zip(ref[1:4], ref[4:])):
        h = torch.addmm(b, h, w.t())
        h = h.relu() if k < 2 else h
    grads = torch.autograd.grad(h, ref, gout.double())
    for mine, theirs in zip((out, gx, *gws, *gbs), (h, *grads[:1], *grads[1:4], *grads[4:])):
        if not torch.allclose(mine.double(), theirs.detach(), rtol=1e-4, atol=1e-4):
            raise RuntimeError("the built kernels disagree with PyTorch on a test MLP")


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The native kernels, built and probed once per process; ``None`` where they cannot run here."""
    try:
        lib = _load(_build())
        _probe(lib)
        return lib
    except (RuntimeError, OSError, AttributeError, subprocess.SubprocessError) as e:
        _reason.append(str(e))
        return None


def blocking() -> str | None:
    """The register blocking of the built kernels (``"avx512: ..."`` or ``"avx2: ..."``), or ``None``."""
    lib = library()
    return None if lib is None else lib.sb_blocking().decode()


def unavailable_reason() -> str | None:
    """Why :func:`library` is ``None`` (``None`` if it is available)."""
    return None if library() is not None else _reason[-1]


def _ptrs(tensors: list[Tensor | None]) -> ctypes.Array:
    return (_P * len(tensors))(*[None if t is None else t.data_ptr() for t in tensors])


def _dims(x: Tensor, weights: list[Tensor]) -> ctypes.Array:
    return (ctypes.c_int64 * (len(weights) + 1))(x.shape[1], *[w.shape[0] for w in weights])


def _forward(lib: ctypes.CDLL, x: Tensor, weights: list[Tensor], biases: list[Tensor], *,
             keep: bool) -> tuple[Tensor, list[Tensor]]:
    n = x.shape[0]
    hidden = [x.new_empty(n, padded(w.shape[0])) for w in weights[:-1]] if keep else []
    out = x.new_empty(n, weights[-1].shape[0])
    if lib.sb_mlp_forward(n, len(weights), _dims(x, weights), _ptrs(weights), _ptrs(biases), x.data_ptr(),
                          _ptrs(hidden) if keep else None, out.data_ptr(), torch.get_num_threads()):
        raise MemoryError("native MLP forward: out of memory")
    return out, hidden


def _backward(lib: ctypes.CDLL, x: Tensor, hidden: list[Tensor], weights: list[Tensor], gout: Tensor, *,
              input_grad: bool) -> tuple[Tensor | None, list[Tensor], list[Tensor]]:
    gx = torch.empty_like(x) if input_grad else None
    gws = [torch.empty_like(w) for w in weights]
    gbs = [w.new_empty(w.shape[0]) for w in weights]
    if lib.sb_mlp_backward(x.shape[0], len(weights), _dims(x, weights), _ptrs(weights), x.data_ptr(),
                           _ptrs(hidden), gout.data_ptr(), None if gx is None else gx.data_ptr(), _ptrs(gws),
                           _ptrs(gbs), torch.get_num_threads()):
        raise MemoryError("native MLP backward: out of memory")
    return gx, gws, gbs


def mlp_forward(x: Tensor, weights: list[Tensor], biases: list[Tensor], *,
                keep: bool) -> tuple[Tensor, list[Tensor]]:
    r"""``Linear -> ReLU -> ... -> Linear`` on ``x`` ``(N, d_0)``; returns ``(N, d_L)`` and, with
    ``keep``, the hidden activations the backward needs, ``(N, padded(d_k))`` each.

    All tensors float32, contiguous, on the CPU; ``weights[k]`` ``(d_{k+1}, d_k)`` as in
    :class:`torch.nn.Linear`. Requires :func:`library`.
    """
    return _forward(library(), x, weights, biases, keep=keep)


def mlp_backward(x: Tensor, hidden: list[Tensor], weights: list[Tensor], gout: Tensor, *,
                 input_grad: bool) -> tuple[Tensor | None, list[Tensor], list[Tensor]]:
    """Gradients of :func:`mlp_forward` for the output gradient ``gout`` ``(N, d_L)``: the input's
    (``None`` unless ``input_grad``), the weights' and the biases'."""
    return _backward(library(), x, hidden, weights, gout, input_grad=input_grad)
