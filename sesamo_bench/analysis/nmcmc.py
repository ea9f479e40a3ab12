r"""Neural MCMC: an independence Metropolis chain with a trained flow as its proposal.

Proposals x'_i ~ q are independent; the chain moves from x to x' with probability
min(1, w(x') / w(x)), w = p / q (Nicoli et al., Phys. Rev. E 101 (2020) 023304; Albergo,
Kanwar, Shanahan, Phys. Rev. D 100 (2019) 034515). The chain is exact for p whatever q is
(where q > 0 wherever p > 0); a poor q shows as a low acceptance rate and a long
autocorrelation time, which the Gamma method of :mod:`sesamo_bench.analysis.observables` measures.
"""

from __future__ import annotations

import numpy as np


def independence_metropolis(log_w: np.ndarray, *, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    r"""The chain through independent proposals with log-weights ``log_w`` (ln p - ln q up to a
    constant), in their order.

    Arguments:
        log_w: ``(N,)``; proposal 0 is the initial state.
        rng: the stream of the accept/reject decisions.

    Returns:
        ``(index, acceptance)``: the proposal the chain sits on at each step ``(N,)`` (index[0] = 0)
        and the fraction of accepted proposals.

    Example:
        >>> idx, acc = independence_metropolis(np.zeros(5), rng=np.random.default_rng(0))
        >>> idx.tolist(), acc                                   # q = p: every proposal accepted
        ([0, 1, 2, 3, 4], 1.0)
    """
    lw = np.asarray(log_w, dtype=np.float64)
    n = len(lw)
    log_u = np.log(rng.random(n))
    index = np.empty(n, dtype=np.int64)
    cur, accepted = 0, 0
    index[0] = 0
    for i in range(1, n):
        if log_u[i] < lw[i] - lw[cur]:
            cur = i
            accepted += 1
        index[i] = cur
    return index, accepted / max(n - 1, 1)
