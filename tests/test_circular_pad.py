"""The lattice convolutions' periodic padding (core/lattice.py): the folded backward gives autograd's
gradient of ``F.pad(mode="circular")`` bit for bit (so lattice runs keep their numbers), and is a
correct adjoint (gradcheck, second derivatives)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sesamo_bench.core import lattice

PLAIN = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@settings(max_examples=40, deadline=None)
@given(ndim=st.integers(1, 3), kernel=st.sampled_from([1, 3, 5]), seed=st.integers(0, 2**16),
       sides=st.lists(st.integers(2, 7), min_size=3, max_size=3), batch=st.integers(1, 4))
def test_conv_equals_torchs_circular_conv_bit_for_bit(ndim, kernel, seed, sides, batch):
    sites = [max(s, kernel // 2) for s in sides[:ndim]]  # torch pads by at most the side
    torch.manual_seed(seed)
    ref = PLAIN[ndim](3, 4, kernel, padding=kernel // 2, padding_mode="circular")
    ours = lattice._CONV[ndim](3, 4, kernel, padding=kernel // 2, padding_mode="circular")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 3, *sites, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    g = torch.randn_like(y) * torch.exp(3 * torch.randn_like(y))  # wide magnitudes: summation order shows
    assert torch.equal(y, y_ref)
    for a, b in zip(torch.autograd.grad(y, [x, ours.weight, ours.bias], g),
                    torch.autograd.grad(y_ref, [x, ref.weight, ref.bias], g)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("ndim,pad", [(1, 1), (2, 1), (2, 2), (3, 1), (1, 3)])
def test_folded_backward_is_the_adjoint(ndim, pad):
    x = torch.randn(2, 2, *([5, 4, 3][:ndim]), dtype=torch.float64, requires_grad=True)
    fn = lambda t: lattice.circular_pad(t, pad, ndim)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))
    torch.testing.assert_close(fn(x), F.pad(x, (pad, pad) * ndim, mode="circular"), rtol=0, atol=0)


def test_circular_conv_uses_the_folded_pad():
    x = torch.randn(3, 2, 6, 4, requires_grad=True)
    w = torch.randn(5, 2, 3, 3)
    y = lattice.circular_conv(x, w)
    assert "CircularPad" in type(y.grad_fn.next_functions[0][0]).__name__
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)
    assert torch.equal(y, ref)
