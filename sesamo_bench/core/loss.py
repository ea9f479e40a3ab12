r"""Training objectives: the penalty of paper Eq. (11), the self-reparametrized KL of Eq. (18), and
the negative log-likelihood of samples of the target (maximum likelihood, the forward KL up to a
constant; Noé et al. 2019 and Köhler et al. 2020 train Boltzmann generators with it).

With samples x_i ~ p, KL(p || q) = E_p[ln p] - E_p[ln q]; the first term does not depend on the
flow, so minimising the mean of -ln q(x_i) (:func:`negative_log_likelihood`) is maximum likelihood.
The ``mixed`` objective of a run is NLL + kl_weight * (reverse KL of Eq. 18).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def penalty(lam: Tensor, *, a: float = 1000.0, b: float = 100.0) -> Tensor:
    r"""Lambda(x) = A sigmoid(B lambda(x)) Theta(lambda(x)) (paper Eq. 11), shape of ``lam``."""
    return torch.where(lam > 0, a * torch.sigmoid(b * lam), torch.zeros_like(lam))


def log_weights(log_p: Tensor, log_q: Tensor) -> Tensor:
    """ln w = -f[x] - ln q(x), shape ``(N,)``."""
    return log_p - log_q


def self_reparametrized_kl(log_w: Tensor, pen: Tensor | None = None, *, gamma: float = 0.5,
                           log_v: Tensor | None = None) -> Tensor:
    r"""Monte-Carlo estimate of paper Eq. (18).

    mean_i[-ln w_i + Lambda_i] + gamma (ln sum_j w_j - ln N); gamma = 0 is the reverse KL (ELBO).
    With sample weights v (a stratified draw, e.g. a mixture's components in fixed shares) every
    mean becomes the v-weighted one: mean_i v_i (-ln w_i + Lambda_i) + gamma ln mean_j v_j w_j.

    Arguments:
        log_w: log importance weights ``(N,)``.
        pen: penalty values ``(N,)`` or ``None``.
        gamma: weight of the ln Z-hat term, in [0, 1].
        log_v: ln of the sample weights ``(N,)`` (mean 1 over a batch), or ``None``.
    """
    if log_v is not None:
        v = log_v.exp()
        loss = -(v * log_w).mean()
        if pen is not None:
            loss = loss + (v * pen).mean()
        if gamma:
            loss = loss + gamma * (torch.logsumexp(log_w + log_v, 0) - math.log(log_w.shape[0]))
        return loss
    loss = -log_w.mean()
    if pen is not None:
        loss = loss + pen.mean()
    if gamma:
        loss = loss + gamma * (torch.logsumexp(log_w, 0) - math.log(log_w.shape[0]))
    return loss


def negative_log_likelihood(log_q: Tensor) -> Tensor:
    r"""mean_i[-ln q(x_i)] over samples x_i of the target (``log_q`` ``(N,)``, from the exact density)."""
    return -log_q.mean()
