"""The generalisation experiment of the equivariant-flow paper (sesamo_bench.analysis.states): DW-4's
metastable states, the one-state training subset, the unseen-state metrics, the plot kind."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sesamo_bench import plugins
from sesamo_bench.analysis import states
from tests.test_reliability2 import assert_clean_error, invoke


def dw4():
    return plugins.targets.create("dw4")


def test_state_is_the_inner_pair_count_at_the_minimum_and_invariant():
    """Hand-built minima: a rhombus of two triangles with side d0 - 1.49 has 5 short pairs, a pair of
    short dimers far apart 2; the label is unchanged under relabelling, rotation, reflection and a
    shift, and a small jiggle relaxes back to the same state."""
    t = dw4()
    s = 4.0 - math.sqrt(4.0 / 1.8)  # the inner well of the pair potential
    h = s * math.sqrt(3) / 2
    rhombus = torch.tensor([[0.0, 0.0], [s, 0.0], [s / 2, h], [s / 2, -h]], dtype=torch.float64)
    dimers = torch.tensor([[0.0, 0.0], [s, 0.0], [0.0, 5.5], [s, 5.5]], dtype=torch.float64)
    x = torch.stack([rhombus, dimers])
    g = torch.Generator().manual_seed(0)
    jig = x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    got = t.metastable_state(t.reduced(jig))
    assert got.tolist() == [5, 2]
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    moved = (jig[:, [2, 0, 3, 1]] @ rot) * torch.tensor([1.0, -1.0], dtype=torch.float64) + 3.0
    assert t.metastable_state(t.reduced(moved)).tolist() == [5, 2]


class Toy:
    """A stand-in with the methods restrict needs: states by the sign of the first coordinate."""

    name = "toy"

    def params(self):
        return {}

    def metastable_state(self, y):
        return (y[:, 0] > 0).long() + 2 * (y[:, 0] > 1).long()


def test_one_state_subset_keeps_exactly_the_modal_state(tmp_path, monkeypatch):
    monkeypatch.setenv("SESAMO_BENCH_CACHE", str(tmp_path))
    data = torch.tensor([[-1.0], [0.5], [0.7], [2.0], [0.2], [-3.0]], dtype=torch.float64)
    rows, covered = states.restrict(Toy(), data, "one-state")
    assert covered == [1] and rows[:, 0].tolist() == [0.5, 0.7, 0.2]
    assert states.restrict(Toy(), data, "all") == (data, [])
    assert states.training_states(Toy(), data).tolist() == [0, 1, 1, 3, 1, 0]  # cached and read back
    assert len(list(tmp_path.rglob("toy-states-*.npy"))) == 1
    with pytest.raises(ValueError, match="train_subset"):
        states.restrict(Toy(), data, "two-states")


def test_unseen_fraction_and_its_importance_weighted_value():
    """Unweighted: the share of samples outside the trained states; weighted: with w, the share of
    weight, which for the exact weights of a sampler q recovers p's mass outside (here by hand)."""
    lab = np.array([4, 4, 2, 5, 4])
    assert states.fractions(lab, 7) == [0, 0, 0.2, 0, 0.6, 0.2, 0]
    w = np.array([1.0, 1.0, 4.0, 2.0, 2.0])
    assert math.isclose(states.fractions(lab, 7, w)[2], 0.4)


@pytest.mark.slow
def test_one_state_runs_record_unseen_states_and_the_plot_draws_them(tmp_path):
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "dw4", "--methods", "realnvp,equivariant", "--preset", "smoke", "--seeds", "0",
                 "--set", "objective=ml", "--set", "train_subset=one-state", "--store", store, "--json",
                 "--workers", "1")
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    t = dw4()
    train = t.training_data("train")
    labels = states.training_states(t, train)
    modal = int(np.bincount(labels).argmax())
    for row in rows:
        assert 0 <= row["unseen_states"] <= 1 and 0 < row["unseen_states_ref"] < 1
    from sesamo_bench.harness.store import Store

    [rec] = [r for r in Store(store).runs() if r["method"] == "realnvp"]
    assert rec["metrics"]["train_rows"] == int((labels == modal).sum())
    assert math.isclose(sum(rec["metrics"]["state_fractions"]), 1.0)
    res = invoke("plot", "--store", store, "--kind", "generalisation", "--out", tmp_path / "plots")
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "plots" / "generalisation_dw4default.png").is_file()


def test_subset_needs_samples_and_states():
    for args, words in ((["--target", "dw4", "--set", "train_subset=one-state"], ("'reverse-kl' uses none",)),
                        (["--target", "lj13", "--set", "objective=ml", "--set", "train_subset=one-state"],
                         ("metastable states", "lj13")),
                        (["--target", "dw4", "--set", "train_subset=few"], ("train_subset", "one-state"))):
        res = invoke("run", *args, "--methods", "realnvp", "--preset", "smoke", "--seeds", "0")
        assert_clean_error(res, None, *words)
