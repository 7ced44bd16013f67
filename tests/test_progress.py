"""utils.progress_bar: a widget in JupyterLab, plain lines without carriage returns in papermill and logs."""

import io

import pytest

from emotionlib import pipeline, utils


def _drive(bar, out, n=50):
    for _ in range(n):
        bar.update(1)
    bar.write("a stage is done", file=out)  # as the runner writes each notebook's line
    bar.close()


def test_a_log_stream_gets_plain_lines_without_carriage_returns():
    out = io.StringIO()  # not a terminal, like CI's captured stderr
    _drive(utils.progress_bar(50, "train", file=out, mininterval=0), out)
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert all(lines), f"blank lines in {text!r}"
    assert "50/50" in lines[-1] and "a stage is done" in lines


def test_the_log_bar_is_not_a_line_per_update_by_default():
    out = io.StringIO()
    _drive(utils.progress_bar(1000, "train", file=out), out, n=1000)
    assert len(out.getvalue().splitlines()) <= 4  # first, the write, the refresh after it, the last


@pytest.mark.parametrize("env", [None, "1"])
def test_a_notebook_bar_is_a_widget_unless_papermill_runs_the_kernel(monkeypatch, env):
    from tqdm.notebook import tqdm as widget_tqdm

    pytest.importorskip("ipywidgets")
    monkeypatch.setattr(utils, "in_notebook", lambda: True)
    if env is None:
        monkeypatch.delenv(utils.NO_WIDGETS_ENV, raising=False)
    else:
        monkeypatch.setenv(utils.NO_WIDGETS_ENV, env)
    out = io.StringIO()
    bar = utils.progress_bar(10, "train", file=out)
    try:
        assert isinstance(bar, widget_tqdm) == (env is None)
    finally:
        bar.close()
    assert utils.progress_bar(10, "off", enabled=False, file=out).disable
    if env:
        assert "\r" not in out.getvalue()


def test_the_runner_marks_its_kernels_and_restores_the_environment(monkeypatch):
    monkeypatch.delenv(utils.NO_WIDGETS_ENV, raising=False)
    before = pipeline._no_widgets()
    import os

    assert os.environ[utils.NO_WIDGETS_ENV] == "1"
    pipeline._restore(before)
    assert utils.NO_WIDGETS_ENV not in os.environ


def test_a_bar_in_a_notebook_papermill_runs_prints_plain_lines(tmp_path):
    """In the executed copy: a stream of plain lines, no widget (no front end would ever render it there)."""
    import nbformat

    from tests.test_runner import KERNEL, params, write_nb

    body = (
        "from emotionlib.utils import progress_bar\nbar = progress_bar(5, 'demo')\n"
        "for _ in range(5):\n    bar.update(1)\nbar.close()"
    )
    nb = write_nb(tmp_path / "nbs" / "01_a.ipynb", body)
    pipeline.run_notebooks([nb], tmp_path / "run", params(tmp_path), kernel=KERNEL, progress=False)
    cell = nbformat.read(tmp_path / "run" / "01_a.ipynb", as_version=4).cells[-1]
    assert not [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    text = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    assert "5/5" in text and "\r" not in text


def test_the_command_line_logs_its_bars_as_plain_lines(tmp_path):
    """Every bar of synth, the image check and training goes through progress_bar: CI's captured stderr."""
    import subprocess
    import sys

    run = [sys.executable, "-m", "emotionlib"]
    synth = subprocess.run(
        [*run, "synth", "--out", str(tmp_path / "d"), "--per-class", "4", "--size", "64"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    train = subprocess.run(
        [*run, "train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--profile", "tiny"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert synth.returncode == 0 and train.returncode == 0, (synth.stderr + train.stderr)[-2000:]
    for err, bar in ((synth.stderr, "synth"), (train.stderr, "verifying images"), (train.stderr, "branch1")):
        assert bar in err and "\r" not in err, err[-1000:]
