"""Security, first (issue 30, item 0): planted job manifests, `reference --out`, sbatch options from
benchmarks.toml, architecture plugins named like a built-in, and run directories confined to the store."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sesamo_bench import plugins
from sesamo_bench.cli import app
from sesamo_bench.errors import ConfigError
from sesamo_bench.harness.store import Store

TINY = ["--preset", "smoke", "--set", "steps=20", "--set", "batch_size=128", "--set", "final_samples=512"]
SECRET = "TOPSECRET-do-not-print"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_clean_error(res, *words: str) -> None:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr)


# ---------------------------------------------------------------------------------------------
# 1. planted job manifests: paths outside the store's folder are refused
# ---------------------------------------------------------------------------------------------
RID = "0123456789ab"
RID2 = "fedcba987654"
JOB = "999999999"  # no such process: a submitit-local job that has ended


def _manifest(store: Path, sub: str, rid: str = RID, **paths: str) -> Path:
    folder = store.parent / "jobs" / sub
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"run_id": rid, "job_id": JOB, "label": "hubbard/realnvp/seed0", "benchmark": None, "target": "hubbard",
             "method": "realnvp", "seed": 0, "params": {}, "config": {}, "resume": False,
             "run_dir": str(store.parent / "runs" / rid), "stdout": str(folder / f"{JOB}_0_log.out"),
             "stderr": str(folder / f"{JOB}_0_log.err")}
    entry.update(paths)
    m = {"submission": sub, "executor": "submitit-local", "created": "2026-01-01T00:00:00+00:00",
         "store": str(store.resolve()), "folder": paths.get("folder", str(folder)), "parameters": {}, "jobs": [entry]}
    path = folder / "manifest.json"
    path.write_text(json.dumps(m))
    return path


def _planted(tmp_path: Path, how: str) -> tuple[Path, Path]:
    """A store whose only manifest points its logs at a secret file and its run directory at a folder
    holding a result.json of this job, both outside the store's folder (``how``: which way)."""
    store = tmp_path / "store" / "r.sqlite"
    Store(store).close()
    outside = tmp_path / "outside"
    (outside / "run").mkdir(parents=True)
    (outside / "secret.txt").write_text(f"line one\n{SECRET}\n")
    sub = "20260101-000000-abcdef"
    (outside / "run" / "result.json").write_text(json.dumps({
        "run_id": RID, "status": "finished", "target": "hubbard", "method": "realnvp", "seed": 0, "ess": 0.5,
        "error": SECRET, "provenance": {"job_id": JOB, "submission": sub}}))
    folder = store.parent / "jobs" / sub
    if how == "absolute":
        paths = {"stdout": str(outside / "secret.txt"), "stderr": str(outside / "secret.txt"),
                 "run_dir": str(outside / "run")}
    elif how == "dotdot":
        up = folder / ".." / ".." / ".." / "outside"
        paths = {"stdout": str(up / "secret.txt"), "stderr": str(up / "secret.txt"),
                 "run_dir": str(store.parent / "runs" / ".." / ".." / "outside" / "run")}
    elif how == "relative":  # relative to the store's folder (where the old code read them from the cwd)
        paths = {"stdout": "../outside/secret.txt", "stderr": "../outside/secret.txt", "run_dir": "../outside/run"}
    else:  # symlinks in the store's folder that leave it
        folder.mkdir(parents=True)
        for name in (f"{JOB}_0_log.out", f"{JOB}_0_log.err"):
            (folder / name).symlink_to(outside / "secret.txt")
        (store.parent / "runs").mkdir()
        (store.parent / "runs" / RID).symlink_to(outside / "run", target_is_directory=True)
        paths = {}
    return store, _manifest(store, sub, **paths)


@pytest.mark.parametrize("how", ["absolute", "dotdot", "relative", "symlink"])
def test_planted_manifest_is_refused_by_status_and_collect(tmp_path, monkeypatch, how):
    pytest.importorskip("submitit")
    store, manifest = _planted(tmp_path, how)
    monkeypatch.chdir(store.parent)
    # a genuine submission beside it still shows its failed job's log
    good = _manifest(store, "20260102-000000-123456", RID2)
    good_log = good.parent / f"{JOB}_0_log.err"
    good_log.write_text("Traceback\nMemoryError: the real failure\n")
    for cmd in (["status"], ["status", "--json"], ["collect"], ["collect", "--json"]):
        res = invoke(*cmd, "--store", store)
        assert res.exit_code == 0, (cmd, res.stderr)
        assert SECRET not in res.stdout + res.stderr, (cmd, res.stdout, res.stderr)
        assert "Traceback (most recent call last)" not in res.stderr
        [warning] = [ln for ln in res.stderr.splitlines() if ln.startswith("warning: ")]
        assert str(manifest) in warning and "refused" in warning and "outside" in warning, warning
    jobs = json.loads(invoke("status", "--store", store, "--json").stdout)
    assert [j["submission"] for j in jobs] == ["20260102-000000-123456"]
    assert jobs[0]["log"] == str(good_log.resolve()) and "the real failure" in jobs[0]["log_tail"]
    assert Store(store).get(RID) is None  # the planted job is not collected
    row = Store(store).get(RID2)
    assert row is not None and row["status"] == "failed"  # the genuine one is
    assert SECRET not in json.dumps(row) and "the real failure" in row["error"]
    assert row["run_dir"] == str(store.parent.resolve() / "runs" / RID2)


def test_manifest_of_the_suite_passes_and_a_copied_store_keeps_it(tmp_path):
    """What `submit` writes (absolute paths in the store's folder) passes, also after copying the store."""
    from sesamo_bench.harness import cluster

    store = tmp_path / "a" / "r.sqlite"
    Store(store).close()
    path = _manifest(store, "20260101-000000-abcdef")
    [m] = cluster.manifests(store.parent)
    assert m["folder"] == str(path.parent.resolve()) and m["jobs"][0]["run_dir"] == str(store.parent / "runs" / RID)
    copy = tmp_path / "b"
    shutil.copytree(store.parent, copy)
    [m] = cluster.manifests(copy)
    e = m["jobs"][0]
    assert m["folder"] == str((copy / "jobs" / m["submission"]).resolve())
    assert e["run_dir"] == str(copy.resolve() / "runs" / RID) and e["stdout"].startswith(str(copy.resolve()))


def test_manifest_naming_another_runs_directory_is_refused(tmp_path, capsys):
    from sesamo_bench.harness import cluster

    store = tmp_path / "r.sqlite"
    Store(store).close()
    path = _manifest(store, "20260101-000000-abcdef", run_dir=str(tmp_path / "runs" / "ba9876543210"))
    assert cluster.manifests(tmp_path) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and f"not the directory of run {RID}" in err


def test_result_json_of_another_run_is_not_ingested(tmp_path):
    """A result.json in a run directory of the store that names another run is not this job's result."""
    pytest.importorskip("submitit")
    store = tmp_path / "r.sqlite"
    Store(store).close()
    sub = "20260101-000000-abcdef"
    _manifest(store, sub)
    (tmp_path / "runs" / RID).mkdir(parents=True)
    (tmp_path / "runs" / RID / "result.json").write_text(json.dumps({
        "run_id": "ba9876543210", "status": "finished", "provenance": {"job_id": JOB, "submission": sub}}))
    res = invoke("collect", "--store", store)
    assert res.exit_code == 0, res.stderr
    assert Store(store).get("ba9876543210") is None and Store(store).get(RID)["status"] == "failed"


# ---------------------------------------------------------------------------------------------
# 2. `reference --out`: an existing file is replaced only with --force; never the shipped one by default
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["phi4-real", "dw4"])
def test_reference_refuses_to_replace_an_existing_out(tmp_path, what):
    out = tmp_path / "keep.json"
    out.write_text("precious\n")
    res = invoke("reference", what, "--out", out, "--chains", "2", "--samples", "4", "--burn-in", "2")
    assert_clean_error(res, str(out), "--force")
    assert out.read_text() == "precious\n"
    assert list(tmp_path.iterdir()) == [out]


def test_reference_without_out_refuses_to_replace_a_file_in_the_current_folder(tmp_path, monkeypatch):
    from sesamo_bench.analysis import phi4_reference

    shipped = tmp_path / "package" / phi4_reference.DATA_FILE  # never the real one, whatever the code does
    shipped.parent.mkdir()
    shipped.write_text("shipped\n")
    monkeypatch.setattr(phi4_reference, "data_path", lambda: shipped)
    monkeypatch.chdir(tmp_path)
    (tmp_path / phi4_reference.DATA_FILE).write_text("mine\n")
    res = invoke("reference", "phi4-real", "--chains", "2", "--samples", "4", "--burn-in", "2")
    assert_clean_error(res, phi4_reference.DATA_FILE, "--force")
    assert (tmp_path / phi4_reference.DATA_FILE).read_text() == "mine\n" and shipped.read_text() == "shipped\n"


@pytest.mark.slow
def test_reference_without_out_leaves_the_shipped_reference(tmp_path, monkeypatch):
    from sesamo_bench.analysis import phi4_reference

    shipped = tmp_path / "package" / phi4_reference.DATA_FILE  # stands in for the package's file
    shipped.parent.mkdir()
    shipped.write_text('{"shipped": true}\n')
    monkeypatch.setattr(phi4_reference, "data_path", lambda: shipped)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = invoke("reference", "phi4-real", "--chains", "4", "--samples", "10", "--burn-in", "4")
    assert res.exit_code == 0, res.stderr
    assert shipped.read_text() == '{"shipped": true}\n'
    made = work / phi4_reference.DATA_FILE
    assert Path(res.stdout.strip()).resolve() == made.resolve() and len(json.loads(made.read_text())["R"]) == 81
    assert str(shipped) in res.stderr  # the note says how to replace the shipped file
    # --out naming the shipped file: refused without --force, replaced with it
    assert_clean_error(invoke("reference", "phi4-real", "--out", shipped, "--chains", "4"), "shipped", "--force")
    res = invoke("reference", "phi4-real", "--out", shipped, "--force", "--chains", "4", "--samples", "10",
                 "--burn-in", "4")
    assert res.exit_code == 0, res.stderr
    assert json.loads(shipped.read_text())["chain"]["chains"] == 4


@pytest.mark.slow
def test_reference_never_writes_through_a_planted_temporary_file(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    out = tmp_path / "ref.json"
    (tmp_path / "ref.tmp").symlink_to(victim)  # the temporary name the old writer used
    res = invoke("reference", "phi4-real", "--out", out, "--chains", "4", "--samples", "10", "--burn-in", "4")
    assert res.exit_code == 0, res.stderr
    assert victim.read_text() == "untouched\n" and json.loads(out.read_text())["chain"]["chains"] == 4
    res = invoke("reference", "dw4", "--out", out, "--force", "--chains", "8", "--samples", "20", "--burn-in", "20")
    assert res.exit_code == 0, res.stderr
    assert json.loads(out.read_text())["target"] == "dw4" and victim.read_text() == "untouched\n"


# ---------------------------------------------------------------------------------------------
# 3. sbatch options: an allow-list of keys, values that cannot add options or script lines
# ---------------------------------------------------------------------------------------------
REFUSED_KEYS = ["export", "chdir", "wrap", "output", "error", "get-user-env", "get_user_env", "array",
                "export-file", "open-mode", "uid", "bb", "input"]


@pytest.mark.parametrize("key", REFUSED_KEYS)
def test_sbatch_key_outside_the_allow_list_is_refused(key):
    from sesamo_bench.harness import cluster

    with pytest.raises(ConfigError) as err:
        cluster.cli_settings(partition=None, gpus=None, cpus=None, mem=None, time_min=None, sbatch=[f"{key}=x"])
    msg = str(err.value)
    assert f"'{key}'" in msg and "not allowed" in msg and "Allowed: account" in msg and "\n" not in msg


@pytest.mark.parametrize("value", ["x", "KILL@45", "USR1@45", "B:USR2@45", "USR2@45,x", "USR2@", "USR2@-1"])
def test_sbatch_signal_other_than_usr2_before_the_limit_is_refused(value):
    from sesamo_bench.harness import cluster

    with pytest.raises(ConfigError) as err:
        cluster.cli_settings(partition=None, gpus=None, cpus=None, mem=None, time_min=None, sbatch=[f"signal={value}"])
    assert "'signal' must be USR2@SECONDS" in str(err.value) and "\n" not in str(err.value)


def test_sbatch_signal_sets_submitits_delay_and_one_signal_line(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    import os

    from sesamo_bench.harness import cluster

    fake = tmp_path / "bin"  # submitit's SlurmExecutor wants an srun on PATH
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    s = cluster.cli_settings(partition=None, gpus=None, cpus=None, mem=None, time_min=1,
                             sbatch=["signal=USR2@45", "account=p"])
    params = s.parameters()
    assert params["slurm_signal_delay_s"] == 45 and "signal" not in params["slurm_additional_parameters"]
    ex = cluster.make_executor("slurm", tmp_path / "jobs", s)
    script = ex._executor._make_submission_file_text("python -m x", "u")
    assert [line for line in script.splitlines() if "--signal" in line] == ["#SBATCH --signal=USR2@45"]


@pytest.mark.parametrize("value", ["ALL,LD_PRELOAD=/tmp/x.so", "proj\n#SBATCH --export=ALL", "proj\nrm -rf ~",
                                   "a b", "a=b", "--wrap", "-x", "'q'", "$(id)", "x;id", "p" * 300])
def test_sbatch_value_that_could_inject_is_refused(value):
    from sesamo_bench.harness import cluster

    with pytest.raises(ConfigError) as err:
        cluster.check_sbatch("account", value, "--slurm-sbatch")
    assert "'account'" in str(err.value) and "refused" in str(err.value)


def test_sbatch_allowed_options_and_spellings():
    from sesamo_bench.harness import cluster

    s = cluster.cli_settings(partition=None, gpus=None, cpus=None, mem=None, time_min=None,
                             sbatch=["account=proj7", "mail_type=END,FAIL", "nodelist=node[1-3],gpu5",
                                     "constraint=a100&ib", "mail-user=a.b@example.org", "begin=now+1hour"])
    assert s.sbatch == {"account": "proj7", "mail-type": "END,FAIL", "nodelist": "node[1-3],gpu5",
                        "constraint": "a100&ib", "mail-user": "a.b@example.org", "begin": "now+1hour"}
    for key, setting in (("partition", "--slurm-partition"), ("time", "--slurm-time"), ("mem", "--slurm-mem")):
        with pytest.raises(ConfigError, match=setting):
            cluster.check_sbatch(key, "x", "--slurm-sbatch")
    with pytest.raises(ConfigError, match="given twice"):
        cluster.sbatch_options({"mail_type": "END", "mail-type": "FAIL"}, "[executor.slurm.sbatch]")


def test_benchmarks_toml_in_the_current_folder_cannot_inject_sbatch_options(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks.toml").write_text('[executor.slurm.sbatch]\nexport = "ALL,LD_PRELOAD=/tmp/evil.so"\n')
    store = tmp_path / "r.sqlite"
    res = invoke("run", "--target", "hubbard", *TINY, "--executor", "slurm", "--store", store)
    assert_clean_error(res, "benchmarks.toml", "[executor.slurm.sbatch]", "'export'", "Allowed: account")
    assert not store.exists()
    (tmp_path / "benchmarks.toml").write_text('[executor.slurm.sbatch]\naccount = "proj\\n#SBATCH --chdir=/"\n')
    res = invoke("run", "--target", "hubbard", *TINY, "--executor", "slurm", "--store", store)
    assert_clean_error(res, "'account'", "refused")
    res = invoke("run", "--target", "hubbard", *TINY, "--executor", "slurm", "--store", store,
                 "--slurm-sbatch", "export=ALL,LD_PRELOAD=/tmp/evil.so")
    assert_clean_error(res, "--slurm-sbatch", "'export'")
    assert not store.exists()


# ---------------------------------------------------------------------------------------------
# 4. a plugin named like a built-in gets its own run ids; the built-ins keep theirs
# ---------------------------------------------------------------------------------------------
#: run ids the code gave before this change (a contract: they must never change)
BUILTIN_IDS = {("hubbard", "realnvp", 0): "2f5f20ea8b98", ("hubbard", "realnvp", 1): "8aa05766295f",
               ("hubbard", "sesamo", 0): "f1dbf32cc69d", ("hubbard", "sesamo", 1): "dc5841c62757"}
SPLINE_ID = "907defcb01c3"  # gaussian-mixture / realnvp / seed 0 / flow=spline, smoke
EQUIVARIANT_ID = "fee2aa18e511"  # phi4-real / equivariant (lattice-odd) / seed 0, smoke
HMC_ID = "cdae46a8836f"  # hubbard HMC, see _hmc_id


def _ids() -> dict[tuple, str]:
    from sesamo_bench.harness.grid import GridRequest, plan

    runs, _ = plan(GridRequest(target="hubbard", methods=["realnvp", "sesamo"], seeds=[0, 1], preset="smoke"))
    return {(r.config.target, r.config.method, r.config.seed): r.run_id for r in runs}


def _one_id(**kw) -> str:
    from sesamo_bench.harness.grid import GridRequest, plan

    [run], _ = plan(GridRequest(seeds=[0], preset="smoke", **kw))
    return run.run_id


def _hmc_id() -> str:
    from sesamo_bench.harness.measure import Measurement, hmc_record

    m = Measurement("hmc", 64, 0.1, {}, settings={"chains": 4, "global_moves": True, "n_leapfrog": 5, "burn_in": 10,
                                                  "thin": 1, "seed": 3, "trajectories": 26})
    return hmc_record(plugins.targets.create("hubbard"), m)["run_id"]


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    """A SESAMO_BENCH_PLUGINS folder; the registries are reloaded without it afterwards."""
    folder = tmp_path / "plugins"
    for kind in ("architectures", "targets"):
        (folder / kind).mkdir(parents=True)
    monkeypatch.setenv("SESAMO_BENCH_PLUGINS", str(folder))
    plugins.reload()
    yield folder
    monkeypatch.delenv("SESAMO_BENCH_PLUGINS")
    plugins.reload()
    for name in [n for n in sys.modules if n.startswith("sesamo_bench_plugins.")]:
        del sys.modules[name]


def test_builtin_run_ids_are_unchanged():
    assert _ids() == BUILTIN_IDS
    assert _one_id(target="gaussian-mixture", methods=["realnvp"], overrides={"flow": "spline"}) == SPLINE_ID
    assert _one_id(target="phi4-real", methods=["equivariant"]) == EQUIVARIANT_ID
    assert _hmc_id() == HMC_ID


def test_architecture_plugin_named_like_a_builtin_gets_its_own_run_ids(plugin_folder):
    (plugin_folder / "architectures" / "realnvp.py").write_text(
        "from sesamo_bench.architectures.realnvp import MLPRealNVP as _Base\n\n\n"
        "class RealNVP(_Base):\n    name = 'realnvp'\n    description = 'a patched realnvp'\n")
    (plugin_folder / "architectures" / "spline.py").write_text(
        "from sesamo_bench.architectures.spline import SplineFlow as _Base\n\n\n"
        "class Spline(_Base):\n    name = 'spline'\n    description = 'a patched spline'\n")
    plugins.reload()
    assert plugins.architectures.get("realnvp").description == "a patched realnvp"
    shadowed = _ids()
    assert set(shadowed) == set(BUILTIN_IDS)
    assert not set(shadowed.values()) & set(BUILTIN_IDS.values())
    spline = _one_id(target="gaussian-mixture", methods=["realnvp"], overrides={"flow": "spline"})
    assert spline != SPLINE_ID
    # the id follows the plugin's source: another edit, another id
    (plugin_folder / "architectures" / "realnvp.py").write_text(
        (plugin_folder / "architectures" / "realnvp.py").read_text() + "# edited\n")
    plugins.reload()
    again = _ids()
    assert not set(again.values()) & (set(shadowed.values()) | set(BUILTIN_IDS.values()))
    assert _one_id(target="gaussian-mixture", methods=["realnvp"], overrides={"flow": "spline"}) == spline


def test_target_plugin_named_like_a_builtin_gets_its_own_hmc_row(plugin_folder):
    (plugin_folder / "targets" / "hubbard.py").write_text(
        "from sesamo_bench.targets.hubbard import Hubbard as _Base\n\n\n"
        "class Hubbard(_Base):\n    name = 'hubbard'\n")
    plugins.reload()
    assert _hmc_id() != HMC_ID


def test_architecture_plugin_does_not_overwrite_the_builtins_stored_row(plugin_folder, tmp_path):
    """The planned runs of the plugin and the built-in are two rows of one store."""
    store = Store(tmp_path / "r.sqlite")
    for rid in BUILTIN_IDS.values():
        store.put({"run_id": rid, "status": "finished", "ess": 0.9})
    (plugin_folder / "architectures" / "realnvp.py").write_text(
        "from sesamo_bench.architectures.realnvp import MLPRealNVP as _Base\n\n\n"
        "class RealNVP(_Base):\n    name = 'realnvp'\n")
    plugins.reload()
    from sesamo_bench.harness.executor import resume_plan
    from sesamo_bench.harness.grid import GridRequest, plan

    runs, _ = plan(GridRequest(target="hubbard", methods=["realnvp", "sesamo"], seeds=[0, 1], preset="smoke"))
    p = resume_plan(runs, store, resume=True)
    assert not p.reuse and len(p.start) == 4  # nothing of the built-in's rows is taken for the plugin's


# ---------------------------------------------------------------------------------------------
# 5. run directories: stored relative to the store's folder, never read or written outside it
# ---------------------------------------------------------------------------------------------
def _raw_run_dir(store: Path, rid: str) -> str:
    with sqlite3.connect(store) as conn:
        return conn.execute("SELECT run_dir FROM runs WHERE run_id = ?", (rid,)).fetchone()[0]


def test_run_dir_is_stored_relative_and_read_in_the_copy(tmp_path):
    store = tmp_path / "a" / "r.sqlite"
    st = Store(store)
    st.put({"run_id": "abc", "status": "finished", "run_dir": str(st.runs_dir / "abc")})
    assert _raw_run_dir(store, "abc") == "runs/abc"
    assert st.get("abc")["run_dir"] == str(store.parent.resolve() / "runs" / "abc")
    st.close()
    shutil.copytree(store.parent, tmp_path / "b")
    assert Store(tmp_path / "b" / "r.sqlite").get("abc")["run_dir"] == str((tmp_path / "b").resolve() / "runs" / "abc")


def test_old_absolute_run_dir_is_read_inside_the_store(tmp_path):
    store = tmp_path / "a" / "r.sqlite"
    st = Store(store)
    st.put({"run_id": "abc", "status": "finished"})
    with sqlite3.connect(store) as conn:  # a row as the earlier versions wrote it
        conn.execute("UPDATE runs SET run_dir = ? WHERE run_id = 'abc'", (str(st.runs_dir / "abc"),))
    assert st.get("abc")["run_dir"] == str(st.runs_dir / "abc")
    st.close()
    shutil.copytree(store.parent, tmp_path / "b")
    copy = Store(tmp_path / "b" / "r.sqlite")
    assert copy.get("abc")["run_dir"] == str(copy.runs_dir / "abc")  # not the original's


@pytest.mark.parametrize("planted", ["../../outside", "/etc", "runs/../../outside", "symlink", "/elsewhere/abc/x"])
def test_run_dir_outside_the_store_is_ignored_and_measure_refuses(tmp_path, capsys, planted):
    outside = tmp_path / "outside"
    outside.mkdir()
    store = tmp_path / "a" / "r.sqlite"
    st = Store(store)
    value = planted
    if planted == "symlink":
        st.runs_dir.mkdir(parents=True)
        (st.runs_dir / "abc").symlink_to(outside, target_is_directory=True)
        value = "runs/abc"
    st.put({"run_id": "abc", "status": "finished", "target": "hubbard", "method": "realnvp", "seed": 0,
            "config": {"target": "hubbard", "method": "realnvp", "seed": 0, "preset": "smoke"}})
    with sqlite3.connect(store) as conn:
        conn.execute("UPDATE runs SET run_dir = ? WHERE run_id = 'abc'", (value,))
    capsys.readouterr()
    assert st.get("abc")["run_dir"] is None
    [warning] = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: run abc") and "outside the store's folder" in warning
    res = invoke("measure", "abc", "--store", store, "--samples", "64")
    assert res.exit_code == 2 and "Traceback" not in res.stdout + res.stderr, res.stderr
    warning, error = res.stderr.splitlines()  # what is wrong with the row, then why nothing is measured
    assert warning.startswith("warning: run abc") and "outside the store's folder" in warning
    assert error.startswith("error: run abc") and "no run directory" in error
    assert list(outside.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["relative", "old-absolute"])
def test_measure_on_a_copied_store_writes_only_into_the_copy(tmp_path, layout):
    orig = tmp_path / "orig" / "r.sqlite"
    res = invoke("run", "--target", "hubbard", "--methods", "realnvp", "--seeds", "0", *TINY, "--store", orig,
                 "--quiet", "--json")
    assert res.exit_code == 0, res.stderr
    [rec] = json.loads(res.stdout)
    rid = rec["run_id"]
    assert _raw_run_dir(orig, rid) == f"runs/{rid}"
    if layout == "old-absolute":
        with sqlite3.connect(orig) as conn:
            conn.execute("UPDATE runs SET run_dir = ? WHERE run_id = ?", (rec["run_dir"], rid))
    before = {p: p.stat().st_mtime_ns for p in (orig.parent / "runs" / rid).iterdir()}
    copy = tmp_path / "copy"
    shutil.copytree(orig.parent, copy)
    res = invoke("measure", rid, "--store", copy / "r.sqlite", "--samples", "256", "--json")
    assert res.exit_code == 0, res.stderr
    assert (copy / "runs" / rid / "measurements.json").is_file()
    assert not (orig.parent / "runs" / rid / "measurements.json").exists()
    assert {p: p.stat().st_mtime_ns for p in (orig.parent / "runs" / rid).iterdir()} == before
    assert "measurements" not in (Store(orig).get(rid)["metrics"] or {})
    assert "reweight" in Store(copy / "r.sqlite").get(rid)["metrics"]["measurements"]
    assert _raw_run_dir(copy / "r.sqlite", rid) == f"runs/{rid}"
    assert os.path.samefile(Store(copy / "r.sqlite").get(rid)["run_dir"], copy / "runs" / rid)
