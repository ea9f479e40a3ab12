r"""Training-throughput benchmark (issue 6): this project's training step against a normflows peer.

:func:`run_perf` measures, in one process and with the same thread settings:

- ``matmul``: the machine's dense matmul rate (``torch.mm`` of ``n x n`` matrices, best of a few
  repetitions) in float32 and float64, and in float32 also through oneDNN
  (``mkldnn::_linear_pointwise``, the operator of :mod:`sesamo_bench.core.kernels`): on AMD CPUs
  ``torch.mm`` runs MKL's AVX2 code and oneDNN is about twice as fast, so the step's FLOP rate is
  reported against both;
- ``throughput``: steps/s and samples/s of one full training step of this project (prior sample,
  flow, symmetry modulation, target action, loss Eq. 18 with penalty, backward, Adam step,
  scheduler; the body of :func:`sesamo_bench.harness.train.train`, built with
  :func:`sesamo_bench.harness.train.build`) for ``sesamo`` and ``realnvp``, and of the same RealNVP
  architecture built with normflows (affine coupling blocks, MLP conditioners of the same
  couplings / hidden layers / width / ReLU, fixed Gaussian base, reverse KL on the same action);
  the ratio ours / peer; the ``realnvp`` step once more with ``kernels="aten"`` (the plain PyTorch
  MLP), which separates the gain of the fused kernels from the rest, and, where the native kernels
  run, with each fused path forced (``realnvp/onednn``, ``realnvp/native``: auto against them); and
  the achieved FLOP rate of the step as a fraction of the matmul rates;
- ``volume``: step time against lattice volume (complex phi^4, L x L) and Hubbard time slices Nt;
- ``ess``: wall time until SESaMo first reaches a target ESS on the quick preset;
- ``time-to-ess`` (the headline, printed first; not in ``--quick``): seconds to ESS 0.3 and 0.5 of
  the quick preset's SESaMo on complex phi^4 8x8 and real phi^4 16x8, and to ESS 0.3 on the next
  lattice size (16x16, 32x16), beside steps/s (:data:`TIME_TO_ESS`).

Every ``throughput`` row times ``realnvp`` with ``kernels=auto`` beside each path forced
(``realnvp_native``, ``realnvp_onednn``, ``realnvp_aten``), names what auto chose
(``auto_kernels``, ``auto_choice``: the measured decisions) and gives auto's rate over the
fastest forced path's (``ratio_auto_vs_fastest``). ``machine`` names the vector ISA and the native
build (``isa``, ``native_blocking``, ``native_march``).

Timings are interleaved (ours, peer, ours, ...) and summarised by the minimum and the median
over repetitions: the minimum is the least disturbed by other processes on a shared machine.

FLOP count (:func:`mlp_flops`): only the Linear layers of the coupling MLPs, 2 B n_in n_out per
layer forward, and twice that backward (input and weight gradients), so 3x forward in total.
Elementwise work, the action, the loss and Adam are not counted (they are the overhead that the
fraction exposes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from . import config as config_mod
from ..core import kernels as kernels_mod
from . import train as train_mod

SECTIONS = ("time-to-ess", "matmul", "throughput", "volume", "ess", "compile")
TARGETS = ("gaussian-mixture", "hubbard", "phi4-real", "phi4-complex")


# ---------------------------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch version and thread setting of this process."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "loadavg": list(load) if load else None, **isa_info()}


def isa_info() -> dict[str, Any]:
    """The CPU's vector instruction set and what the native kernels were built for.

    ``isa``: ``avx512`` (AVX-512F), ``avx2`` (AVX2 and FMA) or another, from the CPU's flags;
    ``torch_cpu_capability``: what PyTorch's own kernels dispatch to; ``native_march`` and
    ``native_blocking``: the native MLP kernels' ``-march`` and register blocking (``None`` where
    they do not build).
    """
    from ..core import native

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    isa = "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags else (platform.machine() or "?")
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    try:
        march = native.march()
    except RuntimeError as exc:
        march = str(exc)
    return {"isa": isa, "torch_cpu_capability": capability, "native_march": march,
            "native_blocking": native.blocking()}


def matmul_rate(n: int = 2048, *, dtype: torch.dtype = torch.float32, reps: int = 5,
                device: str = "cpu") -> float:
    """Best-of-``reps`` FLOP/s of ``torch.mm`` on two ``n x n`` matrices (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    return _best_rate(lambda: torch.mm(a, b, out=out), 2.0 * n**3, reps=reps, device=device)


def onednn_rate(n: int = 2048, *, reps: int = 5) -> float | None:
    """Best-of-``reps`` float32 FLOP/s of oneDNN's ``_linear_pointwise`` on ``n x n`` matrices (CPU);
    ``None`` where this PyTorch build lacks the operator."""
    from ..core import kernels

    if not kernels.available():
        return None
    a, b = torch.randn(n, n, dtype=torch.float32), torch.randn(n, n, dtype=torch.float32)
    return _best_rate(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""), 2.0 * n**3, reps=reps)


def _best_rate(fn: Callable[[], Any], flops: float, *, reps: int, device: Any = "cpu") -> float:
    """``flops`` over the shortest of ``reps`` timed calls of ``fn`` (after one untimed call)."""
    fn()
    best = math.inf
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return flops / best


def _sync(device: Any) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------
def mlp_flops(module: nn.Module, batch: int) -> int:
    r"""FLOPs of one training step's Linear layers in ``module``: 3 x 2 B n_in n_out per Linear.

    Forward 2 B n_in n_out (a multiply and an add per weight per sample); backward computes the
    input gradient and the weight gradient, each as large as the forward product.

    Example:
        >>> mlp_flops(nn.Linear(3, 4), 10)
        720
    """
    return sum(3 * 2 * batch * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------------
# the training steps
# ---------------------------------------------------------------------------------------------
def project_step(cfg: config_mod.RunConfig) -> tuple[Callable[[], float], nn.Module, Any]:
    """One step of :func:`sesamo_bench.harness.train.train` for ``cfg``: returns (step, model, target).

    The same :class:`~sesamo_bench.harness.train.Trainer` step that ``train`` loops over, without
    evaluation or checkpoints.
    """
    train_mod._seed_all(cfg.seed)
    target, model, device, dtype = train_mod.build(cfg)
    trainer = train_mod.Trainer(cfg, model, target, device)
    counter = iter(range(1, 1 << 62))
    return (lambda: trainer.step(next(counter))), model, target


class _PeerTarget(nn.Module):
    """normflows target: ``log_prob`` of flat samples through this project's action."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return self.target.log_prob(z.reshape(z.shape[0], *self.target.shape))


def peer_model(dim: int, *, couplings: int, hidden_layers: int, width: int, target=None):
    r"""normflows RealNVP with this project's architecture on R^dim.

    ``couplings`` :class:`normflows.flows.AffineCouplingBlock` with ReLU MLPs
    ``[n_cond, width x hidden_layers, 2 n_out]`` (last layer zero-initialised), alternating the
    conditioning half ('channel' / 'channel_inv' splits: the first ceil(D/2) components, then
    the last floor(D/2)), exactly the half sizes of :class:`sesamo_bench.core.flows.RealNVP`; a fixed
    standard Gaussian base. normflows' affine coupling uses an unbounded ``exp`` scale.
    """
    import normflows as nf

    na, nb = (dim + 1) // 2, dim // 2
    flows = []
    for k in range(couplings):
        n_cond, n_out, mode = (na, nb, "channel") if k % 2 == 0 else (nb, na, "channel_inv")
        net = nf.nets.MLP([n_cond] + [width] * hidden_layers + [2 * n_out], init_zeros=True)
        flows.append(nf.flows.AffineCouplingBlock(net, scale=True, scale_map="exp", split_mode=mode))
    q0 = nf.distributions.DiagGaussian(dim, trainable=False)
    return nf.NormalizingFlow(q0=q0, flows=flows, p=_PeerTarget(target) if target is not None else None)


def peer_step(cfg: config_mod.RunConfig, target, dtype: torch.dtype, device: Any
              ) -> tuple[Callable[[], float], nn.Module]:
    """One normflows training step (reverse KL, Adam) on ``target``'s action."""
    torch.manual_seed(cfg.seed)
    dim = math.prod(target.shape)
    model = peer_model(dim, couplings=cfg.couplings, hidden_layers=cfg.hidden_layers, width=cfg.width,
                       target=target).to(device=device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model.reverse_kld(cfg.batch_size)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step, model


def time_interleaved(steps: dict[str, Callable[[], Any]], *, reps: int, warmup: int = 2,
                     device: Any = "cpu") -> dict[str, dict[str, float]]:
    """Seconds per call of each function, run in turn ``reps`` times: min, median, all."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(reps):
        for k, fn in steps.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: {"min_s": min(v), "median_s": statistics.median(v), "times_s": v} for k, v in times.items()}


# ---------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------
def _cfg(target: str, method: str, preset: str, batch: int | None, overrides: dict[str, Any],
         device: str) -> config_mod.RunConfig:
    ov = dict(overrides)
    if batch:
        ov["batch_size"] = batch
    ov.setdefault("device", device)
    return config_mod.resolve(target, method, preset=preset, overrides=ov)


def _targets_available() -> list[str]:
    from .. import plugins

    try:
        return list(plugins.targets.names())
    except Exception:  # noqa: BLE001 - plugins still being written
        return []


def throughput_row(target: str, preset: str, batch: int | None, *, reps: int, device: str,
                   rates: dict[str, float], peer: bool = True, overrides: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """steps/s of sesamo, realnvp and the normflows peer for one target / preset / batch.

    Where the preset runs the conditioner MLPs in another dtype than the rest (the Hubbard model:
    float64 physics, float32 MLPs), ``realnvp_uniform`` is the realnvp step with the MLPs in the
    run's dtype too, the peer's setting (``ratio_uniform_vs_peer``).
    """
    overrides = dict(overrides or {})
    fns: dict[str, Callable[[], Any]] = {}
    info: dict[str, Any] = {}
    variants = [("sesamo", "sesamo", {}), ("sesamo_aten", "sesamo", {"kernels": "aten"}), ("realnvp", "realnvp", {}),
                ("realnvp_aten", "realnvp", {"kernels": "aten"})]
    base = _cfg(target, "realnvp", preset, batch, overrides, device)
    if base.mlp_dtype not in ("auto", None):
        variants.append(("realnvp_uniform", "realnvp", {"mlp_dtype": "auto"}))
    cpu = torch.device(device).type == "cpu"
    paths = kernels_mod.candidates() if cpu else ("aten",)
    # every forced path that runs here, beside auto: auto must be within a few % of the fastest
    for path in ("native", "onednn"):
        if path in paths:
            variants.append((f"realnvp_{path}", "realnvp", {"kernels": path}))
    kernels_mod.track()
    for key, method, extra in variants:
        cfg = _cfg(target, method, preset, batch, {**overrides, **extra}, device)
        step, model, tgt = project_step(cfg)
        fns[key] = step
        info[key] = {"params": n_params(model.flow), "flops": mlp_flops(model.flow, cfg.batch_size),
                     "flow_dim": model.flow.dim}
        if key == "realnvp":
            dtype = train_mod.resolve_dtype(cfg.dtype, tgt)  # the run's: samples, ln q, action
            mlp_dtype = train_mod.resolve_mlp_dtype(cfg.mlp_dtype, dtype)
            dev = next(model.parameters()).device
    if peer:
        pstep, pmodel = peer_step(cfg, tgt, dtype, dev)
        fns["normflows"] = pstep
        info["normflows"] = {"params": n_params(pmodel), "flops": mlp_flops(pmodel, cfg.batch_size),
                             "flow_dim": math.prod(tgt.shape)}
    t = time_interleaved(fns, reps=reps, device=dev)
    auto_choice = [c.to_dict() for c in kernels_mod.tracked()]  # what auto chose in the warm-up steps
    row: dict[str, Any] = {"target": target, "preset": preset, "batch": cfg.batch_size,
                           "auto_choice": auto_choice, "auto_kernels": kernels_mod.summary(kernels_mod.tracked())
                           if auto_choice else ("aten" if cpu else "-"),
                           "arch": f"{cfg.couplings}x{cfg.hidden_layers}x{cfg.width}",
                           "dtype": _name(dtype), "mlp_dtype": _name(mlp_dtype), "shape": list(tgt.shape)}
    for k, v in t.items():
        # the FLOPs are the MLPs': rate of the MLPs' dtype (the peer's and realnvp_uniform's is the run's)
        dt = _name(mlp_dtype if k in ("sesamo", "sesamo_aten", "realnvp", "realnvp_aten", "realnvp_onednn",
                                      "realnvp_native")
                   else dtype)
        rate = rates.get(dt)
        best = max(rate or 0.0, rates.get(f"{dt}_onednn") or 0.0) or None
        sps = 1.0 / v["min_s"]
        row[k] = {**info[k], "step_ms_min": 1e3 * v["min_s"], "step_ms_median": 1e3 * v["median_s"],
                  "steps_per_s": sps, "samples_per_s": sps * cfg.batch_size,
                  "gflops": info[k]["flops"] * sps / 1e9,
                  "matmul_fraction": info[k]["flops"] * sps / rate if rate else None,
                  "best_matmul_fraction": info[k]["flops"] * sps / best if best else None}
    row["ratio_realnvp_vs_aten"] = row["realnvp"]["steps_per_s"] / row["realnvp_aten"]["steps_per_s"]
    row["ratio_sesamo_vs_aten"] = row["sesamo"]["steps_per_s"] / row["sesamo_aten"]["steps_per_s"]
    if "realnvp_onednn" in row:
        row["ratio_realnvp_vs_onednn"] = row["realnvp"]["steps_per_s"] / row["realnvp_onednn"]["steps_per_s"]
    if "realnvp_native" in row:
        row["ratio_realnvp_vs_native"] = row["realnvp"]["steps_per_s"] / row["realnvp_native"]["steps_per_s"]
    forced = {p: row[f"realnvp_{p}"]["steps_per_s"] for p in ("native", "onednn", "aten") if f"realnvp_{p}" in row}
    row["fastest_path"] = max(forced, key=forced.get)
    # auto against the fastest forced path of this run (1.0: auto took it; the issue asks >= 0.95)
    row["ratio_auto_vs_fastest"] = row["realnvp"]["steps_per_s"] / max(forced.values())
    if peer:
        row["ratio_realnvp_vs_peer"] = row["realnvp"]["steps_per_s"] / row["normflows"]["steps_per_s"]
        row["ratio_sesamo_vs_peer"] = row["sesamo"]["steps_per_s"] / row["normflows"]["steps_per_s"]
        if "realnvp_uniform" in row:
            row["ratio_uniform_vs_peer"] = row["realnvp_uniform"]["steps_per_s"] / row["normflows"]["steps_per_s"]
    return row


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def volume_rows(*, lattices: list[int], nts: list[int], batch: int, reps: int, device: str) -> list[dict[str, Any]]:
    """Step time against phi^4 lattice size (paper architecture) and Hubbard time slices."""
    rows = []
    avail = _targets_available()
    if "phi4-complex" in avail:
        for L in lattices:
            cfg = _cfg("phi4-complex", "sesamo", "paper", batch, {"shape": [L, L]}, device)
            step, model, _ = project_step(cfg)
            t = time_interleaved({"s": step}, reps=reps)["s"]
            rows.append({"target": "phi4-complex", "size": f"{L}x{L}", "volume": L * L, "batch": batch,
                         "components": 2 * L * L, "step_ms_min": 1e3 * t["min_s"],
                         "step_ms_median": 1e3 * t["median_s"],
                         "gflops": mlp_flops(model.flow, batch) / t["min_s"] / 1e9})
    if "hubbard" in avail:
        for nt in nts:
            params = {"nt": nt} if nt == 1 else {"nt": nt, "sites": 2}
            cfg = _cfg("hubbard", "sesamo", "paper", batch, params, device)
            step, model, _ = project_step(cfg)
            t = time_interleaved({"s": step}, reps=reps)["s"]
            rows.append({"target": "hubbard", "size": f"nt={nt}", "volume": 2 * nt, "batch": batch,
                         "components": 2 * nt, "step_ms_min": 1e3 * t["min_s"],
                         "step_ms_median": 1e3 * t["median_s"],
                         "gflops": mlp_flops(model.flow, batch) / t["min_s"] / 1e9})
    return rows


class _Reached(Exception):
    pass


def time_to_ess(target: str, threshold: float, *, preset: str = "quick", device: str = "cpu",
                max_steps: int | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train SESaMo with ``train.train`` and stop at the first evaluation with ESS >= threshold."""
    ov = dict(overrides or {})
    ov.setdefault("device", device)
    ov.setdefault("final_samples", 2)
    ov.setdefault("save_samples", 0)
    if max_steps:
        ov["steps"] = max_steps
    cfg = config_mod.resolve(target, "sesamo", preset=preset, overrides=ov)
    hit: dict[str, Any] = {}
    best = {"ess": -1.0}

    def cb(row: dict[str, float]) -> None:
        if row["ess"] > best["ess"]:
            best.update(row)
        if row["ess"] >= threshold:
            hit.update(row)
            raise _Reached

    t0 = time.perf_counter()
    try:
        train_mod.train(cfg, callback=cb)
    except _Reached:
        pass
    out = {"target": target, "preset": preset, "threshold": threshold, "batch": cfg.batch_size,
           "arch": f"{cfg.couplings}x{cfg.hidden_layers}x{cfg.width}", "steps_max": cfg.steps,
           "eval_every": cfg.eval_every, "reached": bool(hit), "total_s": time.perf_counter() - t0}
    if hit:
        out.update(step=int(hit["step"]), wall_s=hit["wall_s"], ess=hit["ess"])
    else:
        out.update(best_ess=best["ess"], best_step=best.get("step"))
    return out


#: the headline of ``perf`` (section ``time-to-ess``): (target, lattice shape, thresholds) trained
#: with the quick preset's SESaMo (its best architecture: u1-fourier, z2-fourier) for
#: ``PerfOptions.ess_steps`` steps, and the same on the next lattice size at the first threshold
TIME_TO_ESS = (("phi4-complex", [8, 8], (0.3, 0.5)), ("phi4-real", [16, 8], (0.3, 0.5)),
               ("phi4-complex", [16, 16], (0.3,)), ("phi4-real", [32, 16], (0.3,)))


def time_to_ess_row(target: str, shape: list[int], thresholds: tuple[float, ...], *, steps: int,
                    budget_s: float, preset: str = "quick", method: str = "sesamo", device: str = "cpu",
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    r"""Train ``method`` on ``target`` of lattice ``shape`` (the ``preset``'s settings, ``steps``
    steps) until the training evaluation's ESS first reaches each of ``thresholds``, or until
    ``budget_s`` seconds of training; seconds and steps to each, and steps/s.

    The ESS is the training evaluation's (``eval_samples`` fresh samples every ``eval_every``
    steps); the wall time includes those evaluations, as a user's run does.
    """
    ov = {"shape": list(shape), "steps": steps, "final_samples": 2, "save_samples": 0, "device": device,
          **(overrides or {})}
    cfg = config_mod.resolve(target, method, preset=preset, overrides=ov)
    hits: dict[float, dict[str, Any]] = {}
    last: dict[str, Any] = {"ess": None, "step": 0, "wall_s": 0.0}
    best = {"ess": -1.0}

    def cb(row: dict[str, float]) -> None:
        last.update(row)
        best["ess"] = max(best["ess"], row["ess"])
        for thr in thresholds:
            if thr not in hits and row["ess"] >= thr:
                hits[thr] = {"step": int(row["step"]), "wall_s": row["wall_s"], "ess": row["ess"]}
        if len(hits) == len(thresholds) or row["wall_s"] >= budget_s:
            raise _Reached

    kernels_mod.track()
    try:
        train_mod.train(cfg, callback=cb)
    except _Reached:
        pass
    sps = last["step"] / last["wall_s"] if last["wall_s"] else None
    return {"target": target, "shape": list(shape), "volume": math.prod(shape), "method": method, "flow": cfg.flow,
            "preset": preset, "batch": cfg.batch_size, "steps_setting": cfg.steps, "eval_every": cfg.eval_every,
            "eval_samples": cfg.eval_samples, "budget_s": budget_s, "threads": torch.get_num_threads(),
            "mlp_kernels": kernels_mod.summary(kernels_mod.tracked()) if kernels_mod.tracked() else "aten",
            "steps_run": int(last["step"]), "wall_s": last["wall_s"], "steps_per_s": sps, "best_ess": best["ess"],
            "thresholds": {str(thr): hits.get(thr) for thr in thresholds}}


def compile_row(target: str, preset: str, batch: int | None, *, reps: int, device: str) -> dict[str, Any]:
    """Eager against ``compile=True`` (``torch.compile`` of ``model.sample``, as train.py does)."""
    res: dict[str, Any] = {"target": target, "preset": preset}
    for flag in (False, True):
        cfg = _cfg(target, "sesamo", preset, batch, {"compile": flag}, device)
        step, _, _ = project_step(cfg)
        t = time.perf_counter()
        step()
        first = time.perf_counter() - t
        tm = time_interleaved({"s": step}, reps=reps, warmup=1)["s"]
        res["compiled" if flag else "eager"] = {"first_step_s": first, "step_ms_min": 1e3 * tm["min_s"],
                                                "step_ms_median": 1e3 * tm["median_s"]}
        res["batch"] = cfg.batch_size
    return res


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------
#: largest batch ``perf --batches`` accepts
MAX_BATCH = 1 << 22


@dataclasses.dataclass
class PerfOptions:
    """What :func:`run_perf` measures. ``quick`` picks a subset of about 10-30 s."""

    sections: tuple[str, ...] = ("matmul", "throughput", "volume", "ess")
    targets: tuple[str, ...] = TARGETS
    presets: tuple[str, ...] = ("quick", "paper")
    batches: tuple[int, ...] = (1024, 8192)
    lattices: tuple[int, ...] = (8, 16, 24, 32)
    nts: tuple[int, ...] = (1, 2, 4, 8)
    volume_batch: int = 1024
    reps: int = 7
    threads: int = 0
    device: str = "cpu"
    peer: bool = True
    ess_max_steps: int | None = None
    #: section ``time-to-ess``: training steps (the cosine schedule's length) and the wall-time
    #: limit of each training, in seconds
    ess_steps: int = 20000
    ess_budget_s: float = 900.0

    @classmethod
    def quick_defaults(cls) -> PerfOptions:
        return cls(sections=("matmul", "throughput", "volume"), targets=("gaussian-mixture", "phi4-complex"),
                   presets=("paper",), batches=(1024, 8192), lattices=(8, 16), nts=(1, 2), reps=4)

    @classmethod
    def from_options(cls, *, quick: bool = False, sections: str | None = None, targets: str | None = None,
                     presets: str | None = None, batches: str | None = None, reps: int | None = None,
                     threads: int = 0, peer: bool = True, device: str = "cpu", out: Any = None,
                     ess_steps: int | None = None, ess_budget_s: float | None = None) -> PerfOptions:
        """The options of ``sesamo-bench perf`` (comma lists as typed), validated: one-line
        :class:`~sesamo_bench.errors.ConfigError` for a bad value, before anything is measured."""
        from .. import plugins
        from .train import resolve_device

        resolve_device(device)
        opt = cls.quick_defaults() if quick else cls()
        for name, value in (("sections", sections), ("targets", targets), ("presets", presets)):
            if value:
                setattr(opt, name, tuple(v for v in value.split(",") if v))
        bad = [p for p in opt.presets if p not in ("quick", "paper")]
        if bad:
            raise ConfigError(f"--presets: unknown preset '{bad[0]}'. Allowed: quick, paper")
        if targets:
            for name in opt.targets:
                plugins.targets.get(name)
        if batches:
            try:
                opt.batches = tuple(int(v) for v in batches.split(",") if v)
            except ValueError:
                raise ConfigError(f"--batches expects comma-separated integers, got {batches!r}") from None
            bad_batch = [b for b in opt.batches if not 1 <= b <= MAX_BATCH]
            if bad_batch or not opt.batches:
                raise ConfigError(f"--batches: each batch must be an integer from 1 to {MAX_BATCH}, "
                                  f"got {bad_batch[0] if bad_batch else batches!r}")
        if reps:
            opt.reps = reps
        if ess_steps is not None:
            if not 1 <= ess_steps <= 10**7:
                raise ConfigError(f"--ess-steps must be an integer from 1 to 10000000, got {ess_steps}")
            opt.ess_steps = ess_steps
        if ess_budget_s is not None:
            if not (math.isfinite(ess_budget_s) and 1 <= ess_budget_s <= 86400):
                raise ConfigError(f"--ess-budget must be from 1 to 86400 seconds, got {ess_budget_s}")
            opt.ess_budget_s = ess_budget_s
        bad_sections = [s for s in opt.sections if s not in SECTIONS]
        if bad_sections:
            raise ConfigError(f"--sections: unknown section '{bad_sections[0]}'. Available: {', '.join(SECTIONS)}")
        if out is not None and not out.parent.is_dir():  # fail now, not after the whole benchmark
            raise ConfigError(f"--out: folder {out.parent} does not exist")
        opt.device, opt.peer, opt.threads = device, peer, threads
        return opt


def run_perf(options: PerfOptions | None = None, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    r"""Run the selected sections and return the results as a JSON-ready dictionary.

    Keys: ``machine``, ``options``, ``time_to_ess`` (rows), ``matmul`` (GFLOP/s per dtype),
    ``throughput`` (rows), ``volume`` (rows), ``ess`` (rows), ``compile`` (rows), ``notes``.

    On a CPU, ``kernels=auto``'s decisions are timed anew for every MLP shape measured here and
    replace the cached ones (:func:`sesamo_bench.core.kernels.remeasure`).
    """
    try:
        return _run_perf(options or PerfOptions(), log)
    finally:
        kernels_mod.remeasure(False)


def _run_perf(opt: PerfOptions, log: Callable[[str], None] | None) -> dict[str, Any]:
    bad = [s for s in opt.sections if s not in SECTIONS]
    if bad:
        from ..errors import ConfigError

        raise ConfigError(f"Unknown perf section '{bad[0]}'. Available: {', '.join(SECTIONS)}")
    say = log or (lambda msg: None)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = str(train_mod.resolve_device(opt.device))
    if device == "cpu":
        kernels_mod.keep_freed_memory()  # as in a training worker (sesamo_bench.harness.train.train)
        kernels_mod.remeasure()  # kernels=auto's decisions are timed anew here (and cached for runs)
    out: dict[str, Any] = {"machine": {**machine_info(), "mlp_kernels": kernels_mod.resolve("auto", device),
                                       "mlp_kernel_paths": list(kernels_mod.candidates()) if device == "cpu"
                                       else ["aten"]},
                           "options": dataclasses.asdict(opt), "device": device, "notes": []}
    avail = _targets_available()
    targets = [t for t in opt.targets if t in avail]
    for t in opt.targets:
        if t not in avail:
            out["notes"].append(f"target '{t}' is not available; skipped")
    peer = opt.peer
    if peer:
        try:
            import normflows  # noqa: F401
        except ImportError:
            peer = False
            out["notes"].append("normflows is not installed (pip install 'sesamo-bench[perf]'); peer skipped")
    rates: dict[str, float] = {}
    if "matmul" in opt.sections or "throughput" in opt.sections:
        say("matmul rate")
        for dt in (torch.float32, torch.float64):
            rates[str(dt).replace("torch.", "")] = matmul_rate(2048, dtype=dt, device=device)
        fast = onednn_rate(2048) if device == "cpu" else None
        if fast:
            rates["float32_onednn"] = fast
        out["matmul"] = {"n": 2048, "gflops": {k: v / 1e9 for k, v in rates.items()}}
    if "throughput" in opt.sections:
        out["throughput"] = []
        for t in targets:
            for p in opt.presets:
                for b in opt.batches:
                    say(f"throughput {t} {p} batch {b}")
                    out["throughput"].append(throughput_row(t, p, b, reps=opt.reps, device=device, rates=rates,
                                                            peer=peer))
    if "volume" in opt.sections:
        say("volume scaling")
        out["volume"] = volume_rows(lattices=list(opt.lattices), nts=list(opt.nts), batch=opt.volume_batch,
                                    reps=max(3, opt.reps // 2), device=device)
    if "ess" in opt.sections:
        out["ess"] = []
        for t, thr in (("gaussian-mixture", 0.99), ("hubbard", 0.98)):
            if t not in avail:
                out["notes"].append(f"time-to-ESS: target '{t}' not available; skipped")
                continue
            say(f"time to ESS >= {thr} on {t}")
            out["ess"].append(time_to_ess(t, thr, device=device, max_steps=opt.ess_max_steps,
                                          overrides={"threads": opt.threads} if opt.threads else None))
    if "time-to-ess" in opt.sections:
        out["time_to_ess"] = []
        for t, shape, thresholds in TIME_TO_ESS:
            if t not in avail:
                out["notes"].append(f"time-to-ess: target '{t}' not available; skipped")
                continue
            say(f"time to ESS {', '.join(map(str, thresholds))} on {t} {'x'.join(map(str, shape))} "
                f"(at most {opt.ess_budget_s:.0f} s)")
            out["time_to_ess"].append(time_to_ess_row(t, shape, thresholds, steps=opt.ess_steps,
                                                      budget_s=opt.ess_budget_s, device=device,
                                                      overrides={"threads": opt.threads} if opt.threads else None))
    if "compile" in opt.sections and "phi4-complex" in avail:
        say("torch.compile")
        out["compile"] = [compile_row("phi4-complex", "paper", max(opt.batches), reps=opt.reps, device=device)]
    out["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return out


def render(res: dict[str, Any]) -> str:
    """Plain-text tables of a :func:`run_perf` result."""
    from tabulate import tabulate

    m = res["machine"]
    isa = (f", {m['isa']} (torch {m.get('torch_cpu_capability')}; native kernels "
           f"{m.get('native_blocking') or 'not built'}, -march={m.get('native_march')})") if m.get("isa") else ""
    parts = [f"machine: {m['cpu']}{isa}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, "
             f"float32 MLP kernels {m.get('mlp_kernels', '-')} of {'/'.join(m.get('mlp_kernel_paths') or [])}, "
             f"load average {m.get('loadavg')} -> {m.get('loadavg_end')}"]
    if res.get("time_to_ess"):
        rows = []
        for r in res["time_to_ess"]:
            hit = [f"{thr}: {h['wall_s']:.0f} s ({h['step']} steps)" if h else
                   f"{thr}: not within {r['wall_s']:.0f} s" for thr, h in r["thresholds"].items()]
            first = next(iter(r["thresholds"].values()))
            rows.append([r["target"], "x".join(map(str, r["shape"])), r["flow"], r["batch"], r["steps_setting"],
                         "; ".join(hit), f"{first['wall_s'] / r['volume']:.3f}" if first else "-",
                         f"{r['steps_per_s']:.1f}" if r["steps_per_s"] else "-", f"{r['best_ess']:.3f}",
                         r["mlp_kernels"]])
        parts.append("time to ESS (headline; training evaluations' ESS, wall time including them):\n" + tabulate(
            rows, headers=["target", "lattice", "arch", "batch", "steps", "seconds to ESS", "s/site to first",
                           "steps/s", "best ESS", "MLP kernels"]))
    if "matmul" in res:
        g = res["matmul"]["gflops"]
        fast = f", float32 through oneDNN {g['float32_onednn']:.0f} GFLOP/s" if g.get("float32_onednn") else ""
        parts.append(f"matmul {res['matmul']['n']}^3 (torch.mm): float32 {g['float32']:.0f} GFLOP/s, "
                     f"float64 {g['float64']:.0f} GFLOP/s{fast}")
    if res.get("throughput"):
        rows = []
        for r in res["throughput"]:
            peer = r.get("normflows")
            mixed = r.get("mlp_dtype", r["dtype"]) != r["dtype"]
            dtype = f"{r['dtype']}, MLPs {r['mlp_dtype']}" if mixed else r["dtype"]
            uniform = f" ({r['ratio_uniform_vs_peer']:.2f})" if peer and "ratio_uniform_vs_peer" in r else ""
            rows.append([r["target"], r["preset"], r["arch"], r["batch"], dtype,
                         f"{r['sesamo']['steps_per_s']:.1f}", f"{r['realnvp']['steps_per_s']:.1f}",
                         f"{peer['steps_per_s']:.1f}" if peer else "-",
                         f"{r['ratio_realnvp_vs_peer']:.2f}{uniform}" if peer else "-",
                         f"{r['ratio_sesamo_vs_peer']:.2f}" if peer else "-",
                         f"{r['ratio_realnvp_vs_aten']:.2f}",
                         f"{r['ratio_sesamo_vs_aten']:.2f}" if "ratio_sesamo_vs_aten" in r else "-",
                         f"{r['ratio_realnvp_vs_onednn']:.2f}" if "ratio_realnvp_vs_onednn" in r else "-",
                         f"{r['ratio_realnvp_vs_native']:.2f}" if "ratio_realnvp_vs_native" in r else "-",
                         f"{r['auto_kernels']} {r['ratio_auto_vs_fastest']:.2f}" if "ratio_auto_vs_fastest" in r
                         else "-",
                         f"{r['realnvp']['samples_per_s']:.0f}",
                         _pct(r["realnvp"]["matmul_fraction"]), _pct(r["sesamo"]["matmul_fraction"]),
                         _pct(peer["matmul_fraction"]) if peer else "-",
                         _pct(r["realnvp"].get("best_matmul_fraction")), _pct(r["sesamo"].get("best_matmul_fraction"))])
        parts.append(tabulate(rows, headers=["target", "preset", "arch", "batch", "dtype", "sesamo st/s",
                                             "realnvp st/s", "normflows st/s", "realnvp/peer", "sesamo/peer",
                                             "realnvp/aten", "sesamo/aten", "realnvp/onednn", "realnvp/native",
                                             "auto: chose, /fastest", "realnvp samples/s", "realnvp %mm",
                                             "sesamo %mm", "peer %mm", "realnvp %best", "sesamo %best"]))
        parts.append("%mm: MLP FLOP rate of the step / torch.mm rate of its dtype; %best: / the best of torch.mm "
                     "and oneDNN; realnvp/aten: kernels=auto against kernels=aten (the plain PyTorch MLP), "
                     "sesamo/aten the same for SESaMo's step; "
                     "realnvp/onednn, realnvp/native: kernels=auto against those paths forced; auto: the path "
                     "kernels=auto measured fastest for the MLPs and its step rate over the fastest forced path's; "
                     "(x.xx): realnvp/peer with the MLPs in the run's dtype too, as the peer has them")
    if res.get("volume"):
        parts.append(tabulate([[r["target"], r["size"], r["components"], r["batch"], f"{r['step_ms_min']:.1f}",
                                f"{r['step_ms_median']:.1f}", f"{r['gflops']:.0f}"] for r in res["volume"]],
                              headers=["target", "size", "components", "batch", "step ms (min)", "step ms (median)",
                                       "MLP GFLOP/s"]))
    if res.get("ess"):
        parts.append(tabulate([[r["target"], r["threshold"], r["arch"], r["batch"],
                                r.get("step", "-"), f"{r['wall_s']:.1f}" if r["reached"] else
                                f"not reached (best {r['best_ess']:.3f})"] for r in res["ess"]],
                              headers=["target", "ESS >=", "arch", "batch", "step", "wall s"]))
    if res.get("compile"):
        parts.append(tabulate([[r["target"], r["batch"], k, f"{r[k]['first_step_s']:.1f}",
                                f"{r[k]['step_ms_min']:.1f}"] for r in res["compile"] for k in ("eager", "compiled")],
                              headers=["target", "batch", "mode", "first step s", "step ms (min)"]))
    parts += [f"note: {n}" for n in res.get("notes", [])]
    return "\n\n".join(parts)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"
