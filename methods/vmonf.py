r"""``vmonf``: a mixture of K flows with learned weights (Pires & Figueiredo 2020), a baseline
against mode dropping.

q(x) = sum_k pi_k q_k(x), pi = softmax(logits), each q_k a flow (any registered architecture)
from the shared Gaussian prior; the exact density is a logsumexp over the components.

Training draws the components in fixed shares (n_k = n / K samples of component k) and weighs
the samples by v = pi_k n / n_k, so the objective
sum_k pi_k E_{q_k}[ln q - ln p] = E_q[ln q - ln p] is estimated without sampling the discrete
component: its gradient reaches the weights pi exactly (no score-function term is needed) and
the flows by reparametrisation. Evaluation draws k ~ pi and returns the samples in random order,
so they are independent draws of q (what ESS and neural MCMC need). Components after the first
start from a slightly perturbed copy of the architecture's initialisation so they can separate.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from sesamo_bench.core.method import Method, Sample, Standardized
from sesamo_bench.errors import IncompatibleError


class VMONF(Method):
    r"""Mixture of ``components`` flows with learnable weights.

    Arguments:
        components: K >= 1 (``--set components=K``).
    """

    name = "vmonf"
    needs_symmetry = False
    description = "mixture of K flows with learned weights (VMONF, Pires & Figueiredo 2020); --set components=K"
    label = "VMONF"
    colour = "tab:brown"
    order = 4

    @classmethod
    def options(cls, cfg: Any) -> dict[str, Any]:
        return {"components": cfg.components}

    #: its flows are the components (no single ``flow`` whose vector field flow matching could regress)
    one_flow = False

    @classmethod
    def check(cls, symmetry, spec, **options):
        components = options.get("components", 4)
        if components < 1:
            raise IncompatibleError(f"vmonf needs components >= 1, got {components}")

    def __init__(self, shape, symmetry, *, components: int = 4, **kw):
        type(self).check(None, kw.get("flow"), components=components, **kw)
        super().__init__(shape, None, **kw)
        first = self._modules.pop("flow")
        std = first.std
        extra = []
        gen = torch.Generator().manual_seed(components)
        for _ in range(components - 1):
            # a flow object given to the method: the other components are copies of it
            inner = copy.deepcopy(first.inner) if self.spec.module is not None else self.spec.build(first.inner.domain)
            comp = Standardized(inner, mean=first.mean, std=std)
            with torch.no_grad():
                for p in comp.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            extra.append(comp)
        self.flows = nn.ModuleList([first, *extra])
        self.logits = nn.Parameter(torch.zeros(components))

    @property
    def flow(self) -> Standardized:
        """The first component (what code written for one flow sees)."""
        return self.flows[0]

    def _log_pi(self) -> Tensor:
        return torch.log_softmax(self.logits, 0)

    def _component_log_probs(self, flat: Tensor) -> Tensor:
        """ln q_k(x) for every component, ``(K, N)``."""
        out = []
        for f in self.flows:
            z, ladj = f.inverse(flat)
            out.append(self.prior.log_prob(z) + ladj)
        return torch.stack(out)

    def sample(self, n: int) -> Sample:
        k = len(self.flows)
        log_pi = self._log_pi()
        if self.training:
            counts = [n // k + (1 if j < n % k else 0) for j in range(k)]
        else:
            draw = torch.multinomial(log_pi.exp().detach(), n, replacement=True)
            counts = [int((draw == j).sum()) for j in range(k)]
        xs, log_v = [], []
        for j, (f, m) in enumerate(zip(self.flows, counts)):
            if m == 0:
                continue
            x, _ = f(self.prior.sample(m))
            xs.append(x)
            log_v.append((log_pi[j] + math.log(n / m)).expand(m))
        flat = torch.cat(xs)
        log_q = torch.logsumexp(log_pi[:, None] + self._component_log_probs(flat), 0)
        if self.training:
            return Sample(self._field(flat), log_q, log_v=torch.cat(log_v))
        perm = torch.randperm(n, device=flat.device)
        return Sample(self._field(flat[perm]), log_q[perm])

    def log_prob(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        return torch.logsumexp(self._log_pi()[:, None] + self._component_log_probs(flat), 0)

    def info(self) -> dict[str, Any]:
        return {"mixture_weights": [float(p) for p in self._log_pi().detach().exp()]}
