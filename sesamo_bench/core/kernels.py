r"""Fused CPU kernels for the coupling MLPs: one autograd node per ReLU MLP.

Two implementations, chosen per flow by the ``kernels`` setting (:func:`select`):

- ``"native"``: :mod:`sesamo_bench.core.native`, C compiled on first use. Each thread carries tiles of
  64 rows through all layers, forward and backward, with register-blocked products; the hidden
  activations are written once and read once. On 2 AMD Zen 5 cores at batch 8192 an MLP's forward
  and backward take 0.68x (width 40) to 0.75x (width 100) the time of the oneDNN node below.
- ``"onednn"``: PyTorch's two CPU matrix-product libraries per layer. ``addmm`` and ``mm`` go to
  MKL, which on AMD processors runs its AVX2 code (about half the machine's AVX-512 rate); oneDNN,
  which PyTorch uses for ``torch.compile``'s CPU code and exposes as
  ``mkldnn::_linear_pointwise``, runs AVX-512 on both vendors and applies the bias and the ReLU
  inside the product. :class:`ReLUMLPFunction` runs the MLP ``Linear -> ReLU -> ... -> Linear``
  on these operators:

  - forward: ``h_{k+1} = relu(h_k W_k^T + b_k)`` by ``_linear_pointwise`` (bias and ReLU fused);
    the hidden activations are saved, nothing else;
  - backward, layer by layer from the top: the input gradient ``g W_k`` by ``_linear_pointwise``
    and the ReLU mask applied to it in place from the saved output, then the weight and bias
    gradients ``g^T h_k`` and ``sum_n g`` by oneDNN's inner-product backward (one call for both;
    MKL's ``mm`` and a sum for layers with fewer than :data:`IP_MIN_WIDTH` outputs).

``"auto"`` takes the native kernels where they build (for MLPs up to :data:`NATIVE_MAX_WIDTH`
wide), else oneDNN from :data:`AUTO_MIN_ELEMENTS` batch x width elements on, else the plain module; ``"aten"`` is always
the plain module. Both fused paths equal the plain ``nn.Sequential`` forward and backward up to
float32 rounding (summation order differs; checked in ``tests/test_kernels.py`` against autograd
of the plain module). First-order only; float32 on CPU only.

:func:`available` probes the oneDNN operators once (PyTorch builds without oneDNN, or a future
release that renames them, fall back), :func:`sesamo_bench.core.native.library` the native build.
Inside ``torch.compile`` the plain path is traced instead.
"""

from __future__ import annotations

import ctypes
import functools
import sys

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

#: with ``kernels="auto"`` the native kernels run MLPs whose input, hidden and output widths are all
#: at most this. Wider first and last layers (phi^4 lattices from 16 x 16 on) sum their weight
#: gradients tile by tile into accumulators that no longer fit the L2 cache, and oneDNN is faster:
#: complex phi^4 SESaMo step at batch 1024, 2 threads (native / oneDNN, ms): 8x8 (widths up to 128)
#: 13.9 / 14.9, 12x12 (288) 21.1 / 20.8, 16x16 (512) 30.8 / 28.3, 32x32 (2048) 105 / 87
NATIVE_MAX_WIDTH = 256
#: with ``kernels="auto"`` and no native kernels, the oneDNN path is taken when batch x width reaches
#: this many elements; below it oneDNN's per-call overhead outweighs its faster products (measured
#: crossover: batch 2048 at width 40, one thread; batch 1024 at width 100 is already 1.2x faster)
AUTO_MIN_ELEMENTS = 65536


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
    ``sizes`` ``(n_in, hidden..., n_out)`` runs on ``x``, or ``None`` for the plain module."""
    if kernels == "aten" or not relu or x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    if torch.compiler.is_compiling():  # compiled code uses the compiler's kernels
        return None
    if kernels == "native" or (kernels == "auto" and max(sizes) <= NATIVE_MAX_WIDTH):
        if native.library() is not None:
            return "native"
    if kernels == "onednn" or (kernels == "auto" and x.shape[0] * max(sizes[1:]) >= AUTO_MIN_ELEMENTS):
        return "onednn" if available() else None
    return None


def resolve(kernels: str, device: str | torch.device) -> str:
    """What the float32 ReLU MLPs of a run with this ``kernels`` setting run on ``device``:
    ``"native"``, ``"onednn"`` or ``"aten"`` (with ``"auto"``, :func:`select` may still give
    MLPs wider than :data:`NATIVE_MAX_WIDTH` to oneDNN and small batches to the plain module)."""
    if torch.device(device).type != "cpu" or kernels == "aten":
        return "aten"
    if kernels in ("native", "auto") and native.library() is not None:
        return "native"
    return "onednn" if kernels in ("onednn", "auto") and available() else "aten"


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
