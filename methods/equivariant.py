r"""``equivariant``: a G-invariant prior pushed through a G-equivariant flow (Koehler, Klein, Noe 2020).

If the prior q_0 is invariant under a group acting by volume-preserving maps T_g and the flow
commutes with them, g(T_h z) = T_h g(z), then q(x) = q_0(g^{-1} x) |det d g^{-1}/dx| is
invariant: q(T_h x) = q(x) (their Theorem 1; SESaMo paper Sec. 2.3). No canonical cell, no
penalty, no modulation: the symmetry is in the architecture. The flow is an architecture plugin
that declares the group in its ``equivariance`` (``odd-realnvp`` and ``lattice-odd`` for the sign
flip z2, ``lattice-u1`` for U(1), ``kernel-cnf`` for particles, ``polar-zm`` for the rotations Z_M
of a 2-vector, its order M taken from the symmetry's ``m``); the Gaussian prior with mean 0 is
invariant under every orthogonal action.

Which group. The method enforces the target's largest exact symmetry for which an equivariant
architecture is registered (the Hubbard model: its exact global flip, so the broken single flip
stays learnable); where the target's symmetry is broken and has no exact part (phi^4 with
alpha > 0) it enforces the declared, broken one: the model is then exactly symmetric while the
target is not, and its ESS is bounded by the best symmetric density's (``docs/results.md``).
``info()`` (stored with the run) says which group was enforced and whether the target respects it.
"""

from __future__ import annotations

from typing import Any

from sesamo_bench.core.architecture import FlowSpec
from sesamo_bench.core.equivariant import architectures_for
from sesamo_bench.core.method import PlainFlow
from sesamo_bench.errors import IncompatibleError


class Equivariant(PlainFlow):
    r"""x = g(z), z ~ N(0, sigma^2), g equivariant under the enforced group: ln q is invariant.

    Samples and density are those of the plain flow (:class:`~sesamo_bench.core.method.PlainFlow`);
    what differs is the flow (an equivariant architecture) and the invariant prior.
    """

    name = "equivariant"
    needs_symmetry = True
    description = ("invariant prior through a G-equivariant flow (Koehler et al. 2020); no cell; z2 (odd "
                   "networks), u1 (lattice-u1, u1-fourier), particles (kernel-cnf), zm on R^2 (polar-zm)")
    chooses_flow = True
    equivariant = True
    label = "Equivariant"
    colour = "tab:purple"
    order = 3

    @classmethod
    def symmetry_for(cls, target: Any) -> tuple[str, dict[str, Any]]:
        exact = target.exact_symmetries()
        for name, params in exact:
            if architectures_for(name):
                return name, params
        return exact[0] if exact else target.symmetry()

    @classmethod
    def default_flow(cls, target: Any, current: str) -> str:
        from sesamo_bench import plugins

        group = cls.symmetry_for(target)[0]
        if group in plugins.architectures.get(current).equivariance:
            return current
        names = architectures_for(group, target)
        return names[0] if names else current

    @classmethod
    def check(cls, symmetry, spec: FlowSpec | None, **options):
        if symmetry is None:
            raise IncompatibleError("equivariant needs a symmetry")
        if spec is None or symmetry.name not in spec.cls.equivariance:
            have = architectures_for(symmetry.name)
            raise IncompatibleError(
                f"equivariant: architecture '{spec.name if spec else 'realnvp'}' is not "
                f"{symmetry.name}-equivariant; " + (f"use --set flow={' or flow='.join(have)}" if have else
                                                   f"no registered architecture is {symmetry.name}-equivariant"))
        if getattr(symmetry, "flip", None):
            raise IncompatibleError(f"equivariant: '{spec.name}' commutes with the sign flip of all components, "
                                    f"not of the subset {symmetry.flip}")
        if options.get("prior_mean", 0.0) != 0.0:
            raise IncompatibleError("equivariant needs an invariant prior: prior_mean must be 0")

    def info(self) -> dict[str, Any]:
        return {"enforced_symmetry": self.symmetry.name, "target_respects_it": not self.symmetry.broken}
