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


@pytest.mark.parametrize("args,needle", [
    (["--set", "data.resize=40"], "data.resize=40 must be at least data.crop=48"),
    (["--set", "data.crop=8", "--set", "data.resize=8"], "too small"),  # the feature maps vanish
    (["--batch-size", "1"], "batch_size"),
    (["--set", "train.nope=1"], "has no field 'nope'"),
    (["--set", "lr=1"], "use data.NAME"),
    (["--profile", "fast"], "unknown profile"),
    (["--variant", "bigru7"], "unknown variant"),
])
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
    p = subprocess.Popen([sys.executable, "-m", "emotionlib", "train", "--data", str(data), "--out", str(out), *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
