"""The flow-matching objective (sesamo_bench.core.flow_matching): the regression target against the
closed-form straight-path interpolant, the equivariant pairing (aligned copies found, the loss
unchanged when the data's particles are relabelled, rotated or reflected), the vector field against
the solver's field, and the objective as a user runs it."""

from __future__ import annotations

import math

import pytest
import torch

from sesamo_bench import plugins
from sesamo_bench.core import flow_matching as fm
from sesamo_bench.core.architecture import Domain
from sesamo_bench.core.particles import to_positions, to_reduced
from tests.test_reliability2 import assert_clean_error, invoke


def kernel_cnf(n=4, d=2, scale=0.3, seed=0):
    f = plugins.architectures.get("kernel-cnf")(Domain(((n - 1) * d,), particles=(n, d))).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        f.dynamics.weight.copy_(scale * torch.randn(f.dynamics.weight.shape, generator=g, dtype=torch.float64))
    return f


class Model(torch.nn.Module):
    """What flow_matching_loss reads of a method: ``flow`` (here with the prior's scale ``std``)."""

    def __init__(self, inner, std=1.0):
        super().__init__()
        from sesamo_bench.core.method import Standardized

        self.flow = Standardized(inner, mean=0.0, std=std)


def random_orthogonal(d, g):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def test_interpolant_is_the_straight_path():
    g = torch.Generator().manual_seed(0)
    z, x = torch.randn(7, 6, generator=g, dtype=torch.float64), torch.randn(7, 6, generator=g, dtype=torch.float64)
    t = torch.rand(7, generator=g, dtype=torch.float64)
    yt, ut = fm.interpolant(z, x, t)
    assert torch.allclose(fm.interpolant(z, x, torch.zeros(7, dtype=torch.float64))[0], z)
    assert torch.allclose(fm.interpolant(z, x, torch.ones(7, dtype=torch.float64))[0], x)
    # d/dt of the path by a finite difference is the regression target
    h = 1e-6
    fd = (fm.interpolant(z, x, t + h)[0] - fm.interpolant(z, x, t - h)[0]) / (2 * h)
    assert torch.allclose(fd, ut, atol=1e-8) and torch.allclose(yt, z + t[:, None] * (x - z))


def test_loss_against_a_hand_computation():
    """Independent pairing, fixed t and z: the loss is the batch mean of |v(t, y_t) - (x - z)|^2 in the
    flow's units (coordinates over the prior's standard deviation); a zero field gives mean |x - z|^2."""
    g = torch.Generator().manual_seed(1)
    f = kernel_cnf()
    std = 2.0
    x = torch.randn(9, 6, generator=g, dtype=torch.float64) * 3
    z = torch.randn(9, 6, generator=g, dtype=torch.float64)
    t = torch.rand(9, generator=g, dtype=torch.float64)
    got = fm.flow_matching_loss(Model(f, std), x, pairing="independent", t=t, z=z)
    xu = x / std
    yt = (1 - t[:, None]) * z + t[:, None] * xu
    v = torch.stack([to_reduced(f.dynamics(t[i], to_positions(yt[i:i + 1], 4, 2))[0])[0] for i in range(9)])
    want = ((v - (xu - z)) ** 2).sum(1).mean()
    assert torch.allclose(got, want, rtol=1e-12)
    with torch.no_grad():
        f.dynamics.weight.zero_()
    zero = fm.flow_matching_loss(Model(f, std), x, pairing="independent", t=t, z=z)
    assert torch.allclose(zero, ((xu - z) ** 2).sum(1).mean())


def test_velocity_is_the_field_the_solver_integrates():
    """One Euler step of the solver moves y by h u(0, y): the flow's velocity is the integrated field."""
    f = kernel_cnf(scale=0.5)
    f.solver, f.steps = "euler", 1
    y = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        out, _ = f(y)
        v = f.velocity(torch.zeros(5, dtype=torch.float64), y)
    assert torch.allclose(out, y + v, atol=1e-12)


@pytest.mark.parametrize("n,d", [(4, 2), (3, 3), (6, 2)])
def test_alignment_recovers_a_permuted_rotated_copy(n, d):
    """x a copy of z under a random permutation and orthogonal map: the aligned z is x (exact search)."""
    g = torch.Generator().manual_seed(n + d)
    z = torch.randn(6, n, d, generator=g, dtype=torch.float64)
    z = z - z.mean(1, keepdim=True)
    x = torch.stack([z[k][torch.randperm(n, generator=g)] @ random_orthogonal(d, g) for k in range(6)])
    assert torch.allclose(fm.align(z, x), x, atol=1e-10)


def test_alignment_of_many_particles_recovers_a_copy_and_never_moves_off_the_orbit():
    """LJ-13 size (13! permutations: alternating search): a rotated, relabelled copy is found; for
    unrelated pairs the result is still P z R (same sorted pair distances) and no farther than z."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, 13, 3, generator=g, dtype=torch.float64)
    z = z - z.mean(1, keepdim=True)
    x = torch.stack([z[k][torch.randperm(13, generator=g)] @ random_orthogonal(3, g) for k in range(4)])
    assert torch.allclose(fm.align(z, x), x, atol=1e-8)
    other = torch.randn(4, 13, 3, generator=g, dtype=torch.float64)
    other = other - other.mean(1, keepdim=True)
    a = fm.align(z, other)
    dist = lambda c: torch.cdist(c, c).flatten(1).sort(1).values  # noqa: E731
    assert torch.allclose(dist(a), dist(z), atol=1e-10)
    assert bool((((a - other) ** 2).sum((1, 2)) <= ((z - other) ** 2).sum((1, 2)) + 1e-12).all())


@pytest.mark.parametrize("pairing", ["aligned", "ot"])
def test_loss_is_invariant_under_relabelling_rotating_and_reflecting_the_data(pairing):
    """The pairing minimises over S_N x O(D), the flow is equivariant: the same z and t give the same
    loss for data whose particles are relabelled and which are rotated or reflected (independent
    pairing does not have this property: checked as a control)."""
    g = torch.Generator().manual_seed(3)
    f = kernel_cnf(scale=0.4)
    x = torch.randn(16, 4, 2, generator=g, dtype=torch.float64) * 1.5
    moved = torch.stack([x[k][torch.randperm(4, generator=g)] @ random_orthogonal(2, g) for k in range(16)])
    if pairing == "ot":  # and the batch in another order
        moved = moved[torch.randperm(16, generator=g)]
    z = torch.randn(16, 6, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64)
    if pairing == "ot":
        t = torch.full((16,), 0.37, dtype=torch.float64)  # the assignment reorders z against fixed t
    loss = lambda data, p: fm.flow_matching_loss(Model(f), to_reduced(data), pairing=p, t=t, z=z)  # noqa: E731
    assert torch.allclose(loss(x, pairing), loss(moved, pairing), rtol=1e-9)
    assert not torch.allclose(loss(x, "independent"), loss(moved, "independent"), rtol=1e-3)
    with torch.no_grad():  # a zero field: the loss is the mean squared distance of the pairs, smaller aligned
        f.dynamics.weight.zero_()
        assert float(loss(x, pairing)) < float(loss(x, "independent"))


def test_aligned_prior_samples_are_still_prior_samples():
    """q_0 = N(0, 1) is invariant under S_N x O(D): aligned prior samples keep its moments."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(20000, 6, generator=g, dtype=torch.float64)
    x = to_reduced(torch.randn(20000, 4, 2, generator=g, dtype=torch.float64) + torch.tensor([3.0, 0.0]))
    a = fm.pair(z, x, "aligned", (4, 2))
    assert (a.mean(0).abs() < 0.05).all() and (a.pow(2).sum(1).mean() - 6).abs() < 0.15
    assert ((a - x) ** 2).sum(1).mean() < ((z - x) ** 2).sum(1).mean()
    assert math.isclose(float((a ** 2).sum()), float((z ** 2).sum()), rel_tol=1e-10)  # norm kept pair by pair


def test_flow_matching_objective_as_a_user_runs_it(tmp_path):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "dw4", "--methods", "equivariant", "--preset", "smoke", "--seeds", "0",
                 "--set", "objective=flow-matching", "--set", "fm_pairing=ot", "--store", store, "--json",
                 "--workers", "1")
    assert res.exit_code == 0, res.stderr
    import json

    [row] = json.loads(res.stdout)
    assert row["status"] == "finished" and math.isfinite(row["ess"]) and math.isfinite(row["nll"])
    assert math.isfinite(row["coordinate_w2"])  # the literature's x-W2, recorded for DW-4
    res = invoke("run", "--target", "dw4", "--methods", "sesamo", "--preset", "smoke", "--seeds", "0",
                 "--set", "objective=flow-matching", "--store", tmp_path / "s" / "r.sqlite")
    assert_clean_error(res, tmp_path / "s" / "r.sqlite", "'flow-matching' needs a continuous flow", "kernel-cnf")
    res = invoke("run", "--target", "gaussian-mixture", "--methods", "equivariant", "--preset", "smoke",
                 "--set", "objective=flow-matching", "--store", tmp_path / "g" / "r.sqlite")
    assert_clean_error(res, tmp_path / "g" / "r.sqlite", "objective 'flow-matching'")
    res = invoke("run", "--target", "dw4", "--methods", "equivariant", "--preset", "smoke",
                 "--set", "fm_pairing=hungarian", "--store", tmp_path / "h" / "r.sqlite")
    assert_clean_error(res, tmp_path / "h" / "r.sqlite", "fm_pairing", "aligned")
