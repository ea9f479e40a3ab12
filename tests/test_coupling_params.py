"""RealNVP's coupling parameters are declared once (flows.CouplingParams, issue 28): the run
configuration's fields and every architecture that takes them follow from that declaration."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from sesamo_bench import plugins
from sesamo_bench.core.architecture import Domain, FlowSpec, check_params, schema
from sesamo_bench.core.flows import CouplingParams, RealNVP
from sesamo_bench.errors import ConfigError
from sesamo_bench.harness import config
from sesamo_bench.harness.config import RunConfig, resolve
from sesamo_bench.registry import parameters

ROOT = Path(__file__).resolve().parents[1]
DECLARED = CouplingParams.defaults()


def _takers() -> list[str]:
    """The architectures that take the run's coupling parameters: realnvp and those with run_fields."""
    return [n for n in plugins.architectures.names()
            if n == config.DEFAULT_FLOW or getattr(plugins.architectures.get(n), "run_fields", False)]


def test_the_declaration():
    assert DECLARED == {"couplings": 6, "hidden_layers": 4, "width": 40, "activation": "relu", "scale_bound": 3.0}
    assert isinstance(DECLARED["scale_bound"], float)  # 3.0, not 3: the run ids hash it
    assert CouplingParams.allowed() == {"couplings": {"lo": 1}, "hidden_layers": {"lo": 0}, "width": {"lo": 1},
                                        "activation": {}, "scale_bound": {"above": 0, "hi": 10.0}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        CouplingParams().width = 3


def test_run_config_fields_are_the_declaration():
    assert config.REALNVP_FIELDS == CouplingParams.names()
    assert {k: config.HYPER[k] for k in CouplingParams.names()} == DECLARED
    assert {k: config.RANGES.get(k) for k in CouplingParams.names()} == {
        "couplings": (1, True, None), "hidden_layers": (0, True, None), "width": (1, True, None),
        "activation": None, "scale_bound": (0, False, 10.0)}
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    assert {k: fields[k].type for k in DECLARED} == {f.name: f.type for f in dataclasses.fields(CouplingParams)}
    order = list(fields)  # where they were before the declaration moved (to_dict keeps its order)
    assert order[order.index("checkpoint_every") + 1:][:5] == list(CouplingParams.names())
    assert RunConfig("t", "m").arch() == DECLARED


@pytest.mark.parametrize("name", _takers())
def test_every_architecture_taking_the_run_fields_has_the_declared_schema(name):
    cls = plugins.architectures.get(name)
    assert schema(cls) == DECLARED
    assert {k: parameters(cls)[k] for k in DECLARED} == DECLARED
    sig = inspect.signature(cls.__init__).parameters
    assert {k: sig[k].annotation for k in DECLARED} == {f.name: f.type for f in dataclasses.fields(CouplingParams)}
    # and it does not spell them: its own constructor takes them through CouplingParams.keywords
    assert getattr(cls.__init__, CouplingParams.MARK, None) is CouplingParams
    own = inspect.signature(cls.__init__.__wrapped__).parameters
    assert not set(own) & set(DECLARED)
    with pytest.raises(ConfigError, match=r"unknown key 'depth'. Allowed: activation, couplings, hidden_layers, "
                                          r"scale_bound, width$"):
        check_params(name, {"depth": 3})


def test_no_function_spells_the_declared_defaults():
    """The five names with their defaults are written in CouplingParams only (spline and polar-zm share
    two of them by their own choice; three or more would be a copy of the declaration)."""
    copies = []
    for path in [*(ROOT / "sesamo_bench").rglob("*.py"), *(ROOT / "architectures").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            pos = a.posonlyargs + a.args
            pairs = list(zip(pos[len(pos) - len(a.defaults):], a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
            same = [arg.arg for arg, d in pairs if d is not None and arg.arg in DECLARED
                    and isinstance(d, ast.Constant) and d.value == DECLARED[arg.arg]]
            if len(same) >= 3:
                copies.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}({', '.join(same)})")
    assert not copies, copies


def test_the_decorated_constructors_fill_defaults_and_refuse_unknown_names():
    f = FlowSpec("realnvp", {"couplings": 2, "width": 8}).build(Domain((4,)))
    assert len(f.layers) == 2 and f.layers[0].net[0].out_features == 8
    assert len(RealNVP(4).layers) == DECLARED["couplings"]
    with pytest.raises(TypeError, match=r"^MLPRealNVP.__init__\(\) got an unexpected keyword argument 'widht'$"):
        plugins.architectures.get("realnvp")(Domain((4,)), widht=3)
    with pytest.raises(TypeError, match="needs a \\*\\*kwargs"):
        CouplingParams.keywords(lambda self, *, width=3: None)
    with pytest.raises(TypeError, match="spells 'width' itself"):
        CouplingParams.keywords(lambda self, *, width=3, **coupling: None)


def test_one_setting_two_spellings_and_bad_values():
    a = resolve("phi4-real", "realnvp", overrides={"width": 100})
    b = resolve("phi4-real", "realnvp", overrides={"flow.width": 100})
    assert a == b and a.width == 100 and a.flow_params == {}
    for key in ("width", "flow.width"):
        with pytest.raises(ConfigError, match=r"^--set: 'width' must be >= 1, got 0$"):
            resolve("phi4-real", "realnvp", overrides={key: 0})
    with pytest.raises(ConfigError, match=r"'scale_bound' must be > 0 and <= 10, got 11.0"):
        resolve("phi4-real", "realnvp", overrides={"scale_bound": 11})
