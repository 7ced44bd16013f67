"""The notebook pipeline on tiny throwaway notebooks: parameter checks before anything runs, stopping at the
first failure with the executed copy named, skipping complete notebooks, --force."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from emotionlib import cli, notebook
from emotionlib import pipeline as runner  # the papermill pipeline (emotionlib.runner re-exports it for the notebooks)
from emotionlib.errors import ConfigError

KERNEL = "python3"  # the venv's own kernel: these tests must not need `make setup`
PARAMS_SRC = (
    'profile = "smoke"\ndata_dir = "../data"\nrun_dir = "../run"\ndevice = "auto"\nthreads = "cores"\nseed = 0\n'
    "seeds = 3\noverrides = {}"
)


def write_nb(path: Path, body: str, params: str | None = PARAMS_SRC, n_param_cells: int = 1) -> Path:
    """A notebook: a Markdown title, `n_param_cells` cells tagged `parameters`, then `body`."""
    cells = [new_markdown_cell(f"# {path.stem}")]
    for _ in range(n_param_cells):
        c = new_code_cell(params)
        c.metadata["tags"] = ["parameters"]
        cells.append(c)
    cells.append(new_code_cell(body))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


# each notebook appends its name to run_dir/log.txt: the log says what ran, in which order
LOG = (
    "from pathlib import Path\nPath(run_dir).mkdir(parents=True, exist_ok=True)\n"
    'with open(Path(run_dir) / "log.txt", "a") as f:\n    f.write("{name} %s\\n" % seed)\nprint("ran {name}")'
)


def pipeline(folder: Path, names=("01_a", "02_b")) -> list[Path]:
    return [write_nb(folder / f"{n}.ipynb", LOG.format(name=n)) for n in names]


def params(tmp_path: Path, **kw) -> dict:
    return {
        "profile": "tiny",
        "data_dir": str(tmp_path / "data"),
        "run_dir": str(tmp_path / "run"),
        "device": "cpu",
        "seed": 0,
        **kw,
    }


def log(tmp_path: Path) -> list[str]:
    p = tmp_path / "run" / "log.txt"
    return p.read_text().splitlines() if p.exists() else []


# ----------------------------------------------------------------------------- no kernel needed


def test_notebook_paths_are_the_numbered_notebooks_in_order(tmp_path):
    for name in ("10_late", "02_b", "01_a", "scratch", "Untitled", "1_short"):
        write_nb(tmp_path / f"{name}.ipynb", "pass")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    write_nb(tmp_path / ".ipynb_checkpoints" / "00_ckpt.ipynb", "pass")
    assert [p.name for p in runner.notebook_paths(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_late.ipynb"]


def test_notebook_paths_refuses_an_empty_folder(tmp_path):
    with pytest.raises(ConfigError, match="holds no NN_topic.ipynb"):
        runner.notebook_paths(tmp_path)


def test_declared_parameters_reads_the_parameters_cell(tmp_path):
    p = write_nb(tmp_path / "01_a.ipynb", "x = 1", params=PARAMS_SRC + "\nlimit: int = 3\na = b = 2  # chained")
    assert runner.declared_parameters(p) == {
        "profile": '"smoke"',
        "data_dir": '"../data"',
        "run_dir": '"../run"',
        "device": '"auto"',
        "threads": '"cores"',
        "seed": "0",
        "seeds": "3",
        "overrides": "{}",
        "limit": "3",
        "a": "2",
        "b": "2",
    }


@pytest.mark.parametrize("n", [0, 2])
def test_exactly_one_parameters_cell(tmp_path, n):
    p = write_nb(tmp_path / "01_a.ipynb", "x = 1", n_param_cells=n)
    with pytest.raises(ConfigError, match=f"01_a.ipynb: has {n} code cells tagged `parameters`; tag exactly one"):
        runner.declared_parameters(p)


def test_executed_copy_state(tmp_path):
    p = tmp_path / "nb.ipynb"
    assert runner.executed_copy_state(p, {}) == "not run yet"
    nb = new_notebook(cells=[new_code_cell("x = 1", execution_count=1), new_markdown_cell("text")])
    nb.metadata["papermill"] = {"parameters": {"seed": 0, "run_dir": "/r"}}
    nbformat.write(nb, p)
    assert runner.executed_copy_state(p, {"run_dir": "/r", "seed": 0}) is None  # complete; key order is irrelevant
    assert runner.executed_copy_state(p, {"run_dir": "/r", "seed": 1}) == "other parameters"
    source = tmp_path / "source.ipynb"  # the notebook it was executed from: same code, then other code
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1"), new_markdown_cell("other text")]), source)
    assert runner.executed_copy_state(p, {"run_dir": "/r", "seed": 0}, source) is None
    nbformat.write(new_notebook(cells=[new_code_cell("x = 2")]), source)
    assert runner.executed_copy_state(p, {"run_dir": "/r", "seed": 0}, source) == "the notebook changed"
    nb.cells.append(new_code_cell("y = 2"))  # never executed
    nbformat.write(nb, p)
    assert runner.executed_copy_state(p, {"run_dir": "/r", "seed": 0}) == "incomplete"
    nb.cells[-1].execution_count = 2
    nb.cells[-1].outputs = [nbformat.v4.new_output("error", ename="ValueError", evalue="x", traceback=[])]
    nbformat.write(nb, p)
    assert runner.executed_copy_state(p, {"run_dir": "/r", "seed": 0}) == "failed"
    p.write_text("{not json")
    assert runner.executed_copy_state(p, {}) == "unreadable"


def test_unknown_kernel_is_an_error_before_anything_runs(tmp_path):
    paths = pipeline(tmp_path / "nbs")
    with pytest.raises(ConfigError, match="--kernel no-such-kernel: no such Jupyter kernel"):
        runner.run_notebooks(paths, tmp_path / "out", params(tmp_path), kernel="no-such-kernel", progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_parameter_is_an_error_before_anything_runs(tmp_path):
    nbs = tmp_path / "nbs"
    first = write_nb(nbs / "01_a.ipynb", LOG.format(name="01_a"), params=PARAMS_SRC + "\nlimit = 3")
    second = write_nb(nbs / "02_b.ipynb", LOG.format(name="02_b"))  # declares no `limit`
    with pytest.raises(ConfigError) as e:
        runner.run_notebooks(
            [first, second], tmp_path / "out", params(tmp_path, limit=5), kernel=KERNEL, progress=False
        )
    assert str(e.value) == (
        "02_b.ipynb declares no parameter limit in its `parameters` cell; add it there or do not pass it"
    )
    assert log(tmp_path) == [] and not (tmp_path / "out").exists()  # 01_a, which declares it, did not run either


def test_reproduce_checks_parameters_before_generating_data(tmp_path, monkeypatch):
    nbs = tmp_path / "nbs"
    pipeline(nbs)
    called = []
    monkeypatch.setattr(runner, "ensure_data", lambda *a, **k: called.append(a))
    with pytest.raises(ConfigError, match="declares no parameter extra"):
        runner.reproduce("tiny", None, tmp_path / "run", KERNEL, extra={"extra": 1}, notebooks=nbs, progress=False)
    assert called == []


@pytest.mark.parametrize("seeds", ["0", "-2"])
def test_reproduce_refuses_a_seed_count_below_one(tmp_path, capsys, seeds):
    assert cli.main(["reproduce", "--seeds", seeds, "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().startswith(f"emotionlib reproduce: error: --seeds {seeds}: give a whole")
    assert not (tmp_path / "r").exists()


def test_cli_refuses_a_pipeline_parameter_passed_as_param(tmp_path, capsys):
    assert cli.main(["reproduce", "--param", "data_dir=x", "--out", str(tmp_path / "r")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "emotionlib reproduce: error: --param data_dir: use the option --data instead"
    )


def _capture_run(monkeypatch) -> list[tuple[dict, dict]]:
    """reproduce's call to run_notebooks, without running anything: [(params, local)]."""
    seen = []
    for k in ("EMOTIONLIB_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT"):  # reproduce sets them
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(runner, "ensure_data", lambda *a, **k: None)
    monkeypatch.setattr(runner, "run_notebooks", lambda paths, out, params, **k: seen.append((params, k["local"])))
    return seen


def test_cli_set_reaches_every_notebooks_overrides(tmp_path, monkeypatch):
    pipeline(tmp_path / "nbs")
    seen = _capture_run(monkeypatch)
    assert (
        cli.main(
            [
                "reproduce",
                "--kernel",
                KERNEL,
                "--notebooks",
                str(tmp_path / "nbs"),
                "--out",
                str(tmp_path / "r"),
                "--set",
                "train.stage_epochs=2",
                "--set",
                "train.optimizer=sgd",
            ]
        )
        == 0
    )
    assert seen[0][0]["overrides"] == {"train.stage_epochs": 2, "train.optimizer": "sgd"}


def test_notebooks_declare_overrides_and_apply_them_to_their_configuration():
    # 02 trains what 03 resumes: both (and every notebook that builds one) must build the same configuration
    for p in runner.notebook_paths(runner.NOTEBOOKS):
        assert "overrides" in runner.declared_parameters(p), p.name
        code = "\n".join(c.source for c in runner._read(p).cells if c.cell_type == "code")
        assert code.count("runner.pipeline_config(") == code.count("**overrides)"), p.name


@pytest.mark.parametrize(
    "key, message",
    [
        ("train.no_such=1", "TrainConfig has no field 'no_such'"),
        ("train.batch_size=3", "train.batch_size=3: the contrastive loss"),
        ("train.lr=abc", "--set train.lr='abc': give a number"),
        ("data.mirror=1", "--set data.mirror=1: give true or false"),
    ],
)
def test_cli_refuses_a_bad_set_in_one_line_before_anything_runs(tmp_path, monkeypatch, capsys, key, message):
    pipeline(tmp_path / "nbs")
    seen = _capture_run(monkeypatch)
    assert (
        cli.main(
            [
                "reproduce",
                "--kernel",
                KERNEL,
                "--notebooks",
                str(tmp_path / "nbs"),
                "--out",
                str(tmp_path / "r"),
                "--set",
                key,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("emotionlib reproduce: error: --set") and message in err and "\n" not in err
    assert seen == [] and not (tmp_path / "r").exists()


def test_reproduce_on_other_data_needs_the_small_dataset(tmp_path, monkeypatch, capsys):
    # else notebook 07 would report Sec. 4.4 on the built-in stand-in beside a model trained on FI
    pipeline(tmp_path / "nbs")
    write_nb(
        tmp_path / "nbs" / "07_small.ipynb",
        "pass",
        params=PARAMS_SRC + '\nsmall_data_dir = "x"\nlayout = "artphoto"\nfolds = 5',
    )
    seen = _capture_run(monkeypatch)
    (tmp_path / "FI").mkdir()
    args = [
        "reproduce",
        "--kernel",
        KERNEL,
        "--notebooks",
        str(tmp_path / "nbs"),
        "--out",
        str(tmp_path / "r"),
        "--data",
        str(tmp_path / "FI"),
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "is not the built-in data" in err and "--small-data DIR" in err and "\n" not in err and seen == []
    assert cli.main(args + ["--small-data", str(tmp_path / "art"), "--layout", "iaps", "--folds", "3"]) == 0
    assert seen[0][1] == {"small_data_dir": str((tmp_path / "art").resolve()), "layout": "iaps", "folds": 3}


def test_notebook_07_declares_the_small_dataset_parameters():
    nb07 = runner.NOTEBOOKS / "07_small_datasets.ipynb"
    assert set(runner.SMALL_PARAMETERS) <= set(runner.declared_parameters(nb07))


# ----------------------------------------------------------------------------- with a kernel (a few seconds each)


def test_run_skip_and_force(tmp_path):
    paths = pipeline(tmp_path / "nbs")
    out = tmp_path / "run" / "notebooks"
    p = params(tmp_path)
    recs = runner.run_notebooks(paths, out, p, kernel=KERNEL, progress=False)
    assert [r["status"] for r in recs] == ["executed", "executed"]
    assert log(tmp_path) == ["01_a 0", "02_b 0"]
    executed = nbformat.read(out / "01_a.ipynb", as_version=4)
    assert executed.metadata.papermill.parameters == p
    assert [c.metadata.get("tags") for c in executed.cells if c.cell_type == "code"][:2] == [
        ["parameters"],
        ["injected-parameters"],
    ]
    assert "ran 01_a" in executed.cells[-1].outputs[0].text

    recs = runner.run_notebooks(paths, out, p, kernel=KERNEL, progress=False)  # complete: nothing runs
    assert [r["status"] for r in recs] == ["skipped", "skipped"] and len(log(tmp_path)) == 2

    recs = runner.run_notebooks(paths, out, p, kernel=KERNEL, force=True, progress=False)
    assert [r["status"] for r in recs] == ["executed", "executed"]
    assert log(tmp_path) == ["01_a 0", "02_b 0", "01_a 0", "02_b 0"]
    assert json.loads((out / "pipeline.json").read_text())["parameters"] == p

    (out / "02_b.ipynb").unlink()  # a missing copy reruns, the complete one is skipped (other reasons to rerun:
    recs = runner.run_notebooks(paths, out, p, kernel=KERNEL, progress=False)  # test_executed_copy_state)
    assert [r["status"] for r in recs] == ["skipped", "executed"] and len(log(tmp_path)) == 5
    record = json.loads((out / "pipeline.json").read_text())["notebooks"]
    assert [(r["notebook"], r["status"]) for r in record] == [("01_a.ipynb", "skipped"), ("02_b.ipynb", "executed")]
    assert record[0]["seconds"] > 0  # the time of the run that made the skipped copy


def test_failing_notebook_stops_the_run_and_names_its_executed_copy(tmp_path, capsys, monkeypatch):
    nbs = tmp_path / "nbs"
    write_nb(nbs / "01_ok.ipynb", LOG.format(name="01_ok"))
    write_nb(nbs / "02_fail.ipynb", LOG.format(name="02_fail") + '\nraise ValueError("boom\\nsecond line")')
    write_nb(nbs / "03_after.ipynb", LOG.format(name="03_after"))
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    argv = [
        "reproduce",
        "--notebooks",
        str(nbs),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--kernel",
        KERNEL,
        "--profile",
        "tiny",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: the progress bar
    assert err == (
        "emotionlib reproduce: error: 02_fail.ipynb failed in cell 3 (ValueError: boom); the traceback "
        "is in run/notebooks/02_fail.ipynb"
    )
    assert log(tmp_path) == ["01_ok 0", "02_fail 0"]  # 03 never ran
    failed = nbformat.read(tmp_path / "run" / "notebooks" / "02_fail.ipynb", as_version=4)
    errors = [o for c in failed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert [(o.ename, o.evalue) for o in errors] == [("ValueError", "boom\nsecond line")]

    # the fix: the complete notebook is skipped, the failed one and the rest run
    write_nb(nbs / "02_fail.ipynb", LOG.format(name="02_fail"))
    assert cli.main(argv) == 0
    assert log(tmp_path) == ["01_ok 0", "02_fail 0", "02_fail 0", "03_after 0"]
    assert "01_ok.ipynb: complete" in capsys.readouterr().err


def test_reproduce_passes_threads_to_the_kernels(tmp_path, monkeypatch):
    """The notebooks' `threads` parameter, and the kernels' environment: the setting (EMOTIONLIB_THREADS) and the
    passive wait policy, which must be there before the kernel's torch loads OpenMP."""
    for k in ("EMOTIONLIB_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(runner, "ensure_data", lambda *a, **k: None)
    body = (
        "import os\nfrom pathlib import Path\nPath(run_dir).mkdir(parents=True, exist_ok=True)\n"
        '(Path(run_dir) / "env.txt").write_text("%s %s %s" % (threads, os.environ.get("EMOTIONLIB_THREADS"), '
        'os.environ.get("OMP_WAIT_POLICY")))'
    )
    write_nb(tmp_path / "nbs" / "01_a.ipynb", body)
    runner.reproduce("tiny", None, tmp_path / "run", KERNEL, notebooks=tmp_path / "nbs", progress=False, threads="auto")
    assert (tmp_path / "run" / "env.txt").read_text() == "auto auto PASSIVE"
    with pytest.raises(ConfigError, match="^--threads 'abc'"):
        runner.reproduce(
            "tiny", None, tmp_path / "run2", KERNEL, notebooks=tmp_path / "nbs", progress=False, threads="abc"
        )


def test_stage_lines_print_one_line_per_stage(tmp_path):
    (tmp_path / "summary.csv").write_text(
        "stage,epoch,lr,train_loss,train_acc,seconds,val_acc\n"
        "branch1,1,0.1,2.0,0.2,1.0,nan\nbranch1,2,0.1,1.5,0.4,1.0,0.35\nfusion,1,0.01,1.0,0.6,1.0,0.5\n"
    )
    assert notebook.stage_lines(tmp_path) == [
        " branch1: 2 epochs, train loss 1.500, train acc 40.0 %, val acc 35.0 %",
        "  fusion: 1 epochs, train loss 1.000, train acc 60.0 %, val acc 50.0 %",
    ]
    assert notebook.stage_lines(tmp_path, stages=["fusion"])[0].strip().startswith("fusion")
    assert notebook.stage_lines(tmp_path, stages=["fusion"])[0].strip().startswith("fusion")


def test_local_parameters_reach_only_the_notebooks_that_declare_them(tmp_path):
    nbs = tmp_path / "nbs"
    first = write_nb(nbs / "01_a.ipynb", LOG.format(name="01_a"), params=PARAMS_SRC + "\nfolds = 5")
    second = write_nb(nbs / "02_b.ipynb", LOG.format(name="02_b"))  # declares no `folds`
    with pytest.raises(ConfigError, match="no notebook declares the parameter nope"):
        runner.run_notebooks(
            [first, second], tmp_path / "out", params(tmp_path), kernel=KERNEL, progress=False, local={"nope": 1}
        )
    runner.run_notebooks(
        [first, second], tmp_path / "out", params(tmp_path), kernel=KERNEL, progress=False, local={"folds": 3}
    )
    ran_with = [
        nbformat.read(tmp_path / "out" / n, as_version=4).metadata.papermill.parameters
        for n in ("01_a.ipynb", "02_b.ipynb")
    ]
    assert ran_with[0] == params(tmp_path, folds=3) and ran_with[1] == params(tmp_path)
