"""The README's Python example runs, and trains to the ESS the command line records."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from typer.testing import CliRunner

from sesamo_bench.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_readme_python_example_matches_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", "--target", "hubbard", "--methods", "sesamo", "--preset", "quick",
                                   "--seeds", "0", "--workers", "1", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    (cli,) = json.loads(res.stdout)
    (code,) = re.findall(r"```python\n(.*?)```", _section("Python API"), flags=re.S)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as every run of the command line
    torch.set_default_dtype(torch.float32)  # a fresh interpreter's (the test suite runs in float64)
    try:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    finally:
        torch.set_num_threads(before)
    ev = scope["ev"]
    assert ev.ess == cli["ess"] and ev.log_z == cli["log_z"]
    out = capsys.readouterr().out
    assert "ESS " in out and "hubbard" in out and "sesamo" in out  # the DataFrame of the store


def test_readme_plugin_example_is_a_valid_target():
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", _section("Adding a symmetry or a target"), flags=re.S)
               if "class DoubleWell" in c]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    t = scope["DoubleWell"](a=1.5)
    x = torch.randn(5, 1, dtype=torch.float64)
    assert t.action(x).shape == (5,)
    assert t.symmetry() == ("z2", {"broken": False})
