"""What happens when ... (README): bad input, interruptions, damaged and untrusted files. One test per promise."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from emotionlib.data import EmotionDataset, Sample
from emotionlib.synth import generate
from emotionlib.utils import atomic_path, write_text

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "emotionlib", *map(str, args)], capture_output=True, text=True, **kw)


def error_line(r) -> str:
    """The command failed with exit code 2 and exactly one error line (progress bars aside)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.splitlines() if ": error: " in l]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("d") / "synth", per_class=10, size=64, seed=5, progress=False)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, data):
    """The tiny dataset plus one file of each kind that cannot be used."""
    import shutil

    root = tmp_path_factory.mktemp("bad") / "synth"
    shutil.copytree(data, root)
    (root / "fear" / "empty.jpg").write_bytes(b"")
    (root / "fear" / "notes.jpg").write_text("not an image")
    good = (root / "awe" / "awe_0000.jpg").read_bytes()
    (root / "awe" / "cut.jpg").write_bytes(good[: len(good) // 2])
    return root


# --- bad images and datasets -------------------------------------------------------------------------------


def test_data_command_lists_every_unusable_file_with_its_reason(damaged):
    r = cli("data", damaged)
    assert r.returncode == 0, r.stderr
    for name, reason in (("empty.jpg", "empty file"), ("notes.jpg", "not an image"), ("cut.jpg", "truncated")):
        line = next(l for l in r.stdout.splitlines() if name in l)
        assert reason in line, line


def test_train_goes_on_with_usable_files_and_lists_the_rest(damaged, tmp_path):
    r = cli("train", "--data", damaged, "--out", tmp_path / "run", "--profile", "tiny", "--deterministic")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "run" / "skipped.csv")))
    assert sorted(Path(r["path"]).name for r in rows) == ["cut.jpg", "empty.jpg", "notes.jpg"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_skipped"] == 3


def test_an_empty_class_stops_with_one_line(tmp_path, data):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(data, root)
    for p in (root / "anger").iterdir():
        p.write_bytes(b"")
    r = cli("train", "--data", root, "--out", tmp_path / "run", "--profile", "tiny")
    assert "anger" in error_line(r)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.pt"))


_MODES = st.sampled_from(["RGB", "L", "LA", "RGBA", "P", "CMYK", "1", "I;16"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.integers(1, 300), h=st.integers(1, 300), mode=_MODES, crop=st.sampled_from([8, 32, 48]))
def test_any_image_size_and_mode_gives_five_crops_of_the_right_shape(tmp_path, w, h, mode, crop):
    rng = np.random.default_rng(w * 1000 + h)
    im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        im = Image.fromarray(np.asarray(im, dtype=np.uint16) * 257)  # a 16-bit grey image
        assert im.mode.startswith("I")
    path = tmp_path / f"x_{w}_{h}_{mode.replace(';', '')}.png" if mode != "CMYK" else tmp_path / f"x_{w}_{h}.jpg"
    im.save(path)
    for train in (False, True):
        ds = EmotionDataset([Sample(path, "a")], {"a": 0}, resize=crop + 4, crop=crop, train=train, cache=False)
        x, y, i = ds[0]
        assert x.shape == ((3, crop, crop) if train else (5, 3, crop, crop)) and torch.isfinite(x).all()


# --- bad arguments -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--set", "data.resize=40"], "data.resize=40 must be at least data.crop=48"),
        (["--set", "data.crop=8", "--set", "data.resize=8"], "too small"),  # the feature maps vanish
        (["--batch-size", "1"], "batch_size"),
        (["--set", "train.nope=1"], "has no field 'nope'"),
        (["--set", "lr=1"], "use data.NAME"),
        (["--profile", "fast"], "unknown profile"),
        (["--variant", "bigru7"], "unknown variant"),
        (["--set", "train.lr=abc"], "train.lr='abc': give a number"),  # --set values take the field's type
        (["--set", "train.stage_epochs=abc"], "train.stage_epochs='abc': give a whole number"),
        (["--set", "train.lr=NaN"], "give a finite number"),
        (["--set", "data.split=[1,0,0]"], "the test fraction"),  # refused at the start, not after all the training
        (["--set", "data.num_workers=-1"], "data.num_workers=-1"),
        (["--device", "foo"], "device 'foo'"),
        (["--set", "model.width=0"], "model.width=0.0"),  # not clamped to 8 channels in silence
        (["--set", "model.width=-1"], "model.width=-1.0"),
        (["--seed", "-1"], "train.seed=-1"),
    ],
)
def test_bad_arguments_are_one_line_exit_2_and_write_nothing(data, tmp_path, args, needle):
    out = tmp_path / "run"
    r = cli("train", "--data", data, "--out", out, "--profile", "tiny", *args)
    assert needle in error_line(r)
    assert not out.exists()


def test_missing_data_path_is_one_line(tmp_path):
    r = cli("train", "--data", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert "nowhere" in error_line(r)
    assert "nowhere" in error_line(cli("data", tmp_path / "nowhere"))


# --- interruption ------------------------------------------------------------------------------------------


def test_sigkill_in_the_middle_of_a_stage_then_resume_gives_the_same_metrics(data, tmp_path):
    args = ["--profile", "tiny", "--deterministic", "--set", "train.stage_epochs=3"]
    full = cli("train", "--data", data, "--out", tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut"
    p = subprocess.Popen(
        [sys.executable, "-m", "emotionlib", "train", "--data", str(data), "--out", str(out), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    summary = out / "summary.csv"
    while time.time() < deadline:  # wait until stage 2 is under way: at least 4 epochs written
        if summary.exists() and summary.read_text().count("\n") >= 5:
            break
        if p.poll() is not None:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run finished before it could be interrupted"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "metrics.json").exists()
    r = cli("train", "--out", out, "--resume", *args)
    assert r.returncode == 0, r.stderr
    assert (out / "metrics.json").read_text() == (tmp_path / "full" / "metrics.json").read_text()
    assert (out / "summary.csv").read_text().count("\n") == (tmp_path / "full" / "summary.csv").read_text().count("\n")


# --- damaged files -----------------------------------------------------------------------------------------


def test_a_corrupt_checkpoint_is_named_never_a_silent_restart(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    from conftest import Killed, kill_after_epochs

    from emotionlib.config import get_config
    from emotionlib.train import fit

    with monkeypatch.context() as m, pytest.raises(Killed):
        kill_after_epochs(m, 2)
        fit(get_config("tiny"), data, out, progress=False)
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    before = (out / "summary.csv").read_text()
    r = cli("train", "--out", out, "--resume", "--profile", "tiny")
    line = error_line(r)
    assert "last.pt" in line and "damaged" in line
    assert (out / "summary.csv").read_text() == before and last.stat().st_size == 100


def test_a_split_that_names_missing_files_is_an_error_naming_the_file(data, tmp_path):
    split = tmp_path / "split.csv"
    split.write_text("path,label,split\nfear/fear_0000.jpg,fear,train\nfear/gone.jpg,fear,test\n")
    r = cli("train", "--data", data, "--split", split, "--out", tmp_path / "run", "--profile", "tiny")
    assert "gone.jpg" in error_line(r)


# --- nothing lost ------------------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


# --- what issue 17 found: leaks, two writers, lost checkpoints, failed starts -------------------------------


def test_one_file_listed_twice_by_another_spelling_is_refused_naming_both_lines(data, tmp_path):
    (tmp_path / "d").symlink_to(data)
    first = "amusement/amusement_0000.jpg"
    for other in ("amusement/../amusement/amusement_0000.jpg", str(data / first), str(tmp_path / "d" / first)):
        manifest = data / f"m_{abs(hash(other))}.csv"  # beside the images: paths are relative to it
        manifest.write_text(f"path,label\n{first},amusement\nanger/anger_0000.jpg,anger\n{other},anger\n")
        try:
            line = error_line(cli("data", manifest))
        finally:
            manifest.unlink()
        assert "line 4" in line and "line 2" in line and first in line, line


def test_case_only_class_folders_are_refused(tmp_path, data):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(data, root)
    shutil.copytree(root / "fear", root / "FEAR")
    line = error_line(cli("data", root))
    assert "'FEAR' and 'fear'" in line


def test_a_second_writer_of_one_run_folder_is_refused(data, tmp_path):
    from emotionlib.utils import folder_lock

    out = tmp_path / "run"
    with folder_lock(out):  # a run in progress holds it
        line = error_line(cli("train", "--data", data, "--out", out, "--profile", "tiny", "--resume"))
    assert f"in use by process {os.getpid()}" in line
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # the second writer wrote nothing


def test_resume_without_last_pt_goes_on_from_the_latest_stage_checkpoint(data, tmp_path, monkeypatch):
    from conftest import Killed, kill_after_epochs

    from emotionlib.config import get_config
    from emotionlib.train import fit

    full = cli("train", "--data", data, "--out", tmp_path / "full", "--profile", "tiny", "--deterministic")
    assert full.returncode == 0, full.stderr
    out = tmp_path / "cut"
    with monkeypatch.context() as m, pytest.raises(Killed):
        kill_after_epochs(m, 2)  # killed inside the third stage's epoch
        fit(get_config("tiny", **{"train.deterministic": True}), data, out, progress=False)
    (out / "checkpoints" / "last.pt").unlink()  # three stages of one epoch began; two finished
    r = cli("train", "--out", out, "--resume", "--profile", "tiny", "--deterministic")
    assert r.returncode == 0, r.stderr
    rows = lambda run: [(r["stage"], r["epoch"]) for r in csv.DictReader(open(run / "summary.csv"))]  # noqa: E731
    assert rows(out) == rows(tmp_path / "full")  # no row twice
    assert (out / "metrics.json").read_text() == (tmp_path / "full" / "metrics.json").read_text()


def test_resume_without_any_checkpoint_but_with_epochs_is_refused(data, tmp_path, monkeypatch):
    from conftest import Killed

    import emotionlib.train as T
    from emotionlib.config import get_config

    def killed(*a, **k):
        raise Killed("killed after the first epoch's row, before its stage was saved")

    out = tmp_path / "run"
    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(T, "_save_stage", killed)
        T.fit(get_config("tiny"), data, out, progress=False)
    (out / "checkpoints" / "last.pt").unlink()
    before = (out / "summary.csv").read_text()
    assert "last.pt is missing" in error_line(cli("train", "--out", out, "--resume", "--profile", "tiny"))
    assert (out / "summary.csv").read_text() == before


def test_a_failed_start_leaves_nothing_that_blocks_the_corrected_retry(data, tmp_path):
    out = tmp_path / "run"
    (tmp_path / "notes.txt").write_text("not data")
    assert "neither a folder" in error_line(
        cli("train", "--data", tmp_path / "notes.txt", "--out", out, "--profile", "tiny")
    )
    assert not out.exists()
    split = tmp_path / "split.csv"
    split.write_text("path,label,split\nfear/gone.jpg,fear,test\n")
    assert "gone.jpg" in error_line(cli("train", "--data", data, "--split", split, "--out", out, "--profile", "tiny"))
    assert not out.exists()
    r = cli("train", "--data", data, "--out", out, "--profile", "tiny")
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished tiny run with no validation split."""
    out = tmp_path_factory.mktemp("fin") / "run"
    r = cli("train", "--data", data, "--out", out, "--profile", "tiny", "--set", "data.split=[0.85,0.15,0]")
    assert r.returncode == 0, r.stderr
    return out


def test_metrics_json_is_strict_json_with_null_for_an_empty_validation_split(finished):
    def refuse(name):
        raise AssertionError(f"{name} is not JSON")

    m = json.loads((finished / "metrics.json").read_text(), parse_constant=refuse)
    assert m["n_val"] == 0 and m["val_accuracy"] is None


def test_evaluating_other_data_keeps_the_runs_own_evaluation(finished, data, tmp_path):
    import shutil

    assert cli("evaluate", "--run", finished).returncode == 0
    own = (finished / "evaluations" / "test.json").read_text()
    other = tmp_path / "other" / "test"  # named like the run's own split
    for c in ("fear", "anger"):
        shutil.copytree(data / c, other / c)
    r = cli("evaluate", "--run", finished, "--data", other)
    assert r.returncode == 0, r.stderr
    assert (finished / "evaluations" / "test.json").read_text() == own
    out = json.loads(r.stdout)
    assert out["data"].startswith("test-") and out["mean_tpr_classes"] == ["anger", "fear"]
    saved = json.loads((finished / "evaluations" / f"{out['data']}.json").read_text())
    present = [saved["per_class_tpr"][c] for c in ("anger", "fear")]
    assert saved["mean_tpr"] == pytest.approx(sum(present) / 2) and saved["per_class_tpr"]["awe"] is None


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda c: c.pop("config"), "lacks config"),
        (lambda c: c.update(classes=c["classes"][:3]), "3 class name(s) for a model of 8 classes"),
    ],
)
def test_a_model_checkpoint_without_config_or_with_the_wrong_classes_is_one_line(finished, tmp_path, damage, needle):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    path = run / "checkpoints" / "model.pt"
    ckpt = torch.load(path, weights_only=True)
    damage(ckpt)
    torch.save(ckpt, path)
    img = next((ROOT / "tests").glob("*.py"))  # never read: the checkpoint is refused first
    assert needle in error_line(cli("predict", "--run", run, img))
    assert needle in error_line(cli("evaluate", "--run", run))


def test_out_that_is_a_file_is_one_line(data, tmp_path):
    (tmp_path / "f").write_text("x")
    assert "is a file" in error_line(cli("train", "--data", data, "--out", tmp_path / "f", "--profile", "tiny"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_is_one_line(data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert "cannot write" in error_line(cli("train", "--data", data, "--out", ro / "run", "--profile", "tiny"))
    finally:
        ro.chmod(0o700)


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch, capsys):
    import errno

    from emotionlib import cli as cli_module
    from emotionlib import train

    calls = []
    real = torch.save

    def save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 2:  # after epoch 1's last.pt: the stage checkpoint finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(train.torch, "save", save)
    out = tmp_path / "run"
    code = cli_module.main(["train", "--data", str(data), "--out", str(out), "--profile", "tiny"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert [l for l in err.splitlines() if ": error: " in l][-1].endswith("No space left on device")
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert not list((out / "checkpoints").glob(".*.tmp"))


def test_a_file_name_that_is_not_utf8_is_refused_alike_by_data_and_train(data, tmp_path):
    import shutil

    root = tmp_path / "d"
    shutil.copytree(data, root)
    shutil.copy(root / "fear" / "fear_0000.jpg", os.fsencode(root / "fear") + b"/fear_\xff.jpg")
    assert "not valid UTF-8" in error_line(cli("data", root))
    assert "not valid UTF-8" in error_line(cli("train", "--data", root, "--out", tmp_path / "run", "--profile", "tiny"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args,needle", [(["--size", "100000"], "size=100000"), (["--per-class", "1000000000"], "per_class=1000000000")]
)
def test_synth_sizes_are_bounded(tmp_path, args, needle):
    assert needle in error_line(cli("synth", "--out", tmp_path / "s", *args))
    assert not (tmp_path / "s").exists()


def test_sigint_of_reproduce_gives_advice_that_holds(tmp_path):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    params = new_code_cell(
        'profile = "tiny"\ndata_dir = ""\nrun_dir = ""\ndevice = "cpu"\nseed = 0\nseeds = 3\n'
        'threads = "cores"\noverrides = {}'
    )
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell("import time\nprint('started', flush=True)\ntime.sleep(60)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    (tmp_path / "nbs").mkdir()
    nbformat.write(nb, tmp_path / "nbs" / "01_wait.ipynb")
    (tmp_path / "data").mkdir()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "emotionlib",
            "reproduce",
            "--notebooks",
            str(tmp_path / "nbs"),
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "run"),
            "--kernel",
            "python3",
            "--profile",
            "tiny",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "run" / "notebooks" / "01_wait.ipynb").exists():
        time.sleep(0.2)
    time.sleep(3)  # the kernel is in the cell
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130
    # the driver's own line; reproduce has no --resume flag (the kernel's ZMQ shutdown noise is not checked here)
    last = [l for l in err.splitlines() if l.startswith("emotionlib reproduce")]
    assert last == [
        "emotionlib reproduce: interrupted; rerun the same command to continue (complete notebooks are skipped)"
    ], err
