"""Multi-stage training end to end on tiny generated data: the run folder, freezing, determinism, resuming."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import Killed, kill_after_epochs

from emotionlib.config import get_config
from emotionlib.errors import CheckpointError, ConfigError, RunFolderError
from emotionlib.synth import generate
from emotionlib.train import TrainingError, fit, load_checkpoint, load_run, read_summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", per_class=10, size=64, seed=3, progress=False)


def tiny_cfg(**over):
    return get_config("tiny", **{"train.deterministic": True, **over})


@pytest.fixture(scope="module")
def base_run(tiny_data, tmp_path_factory) -> Path:
    """One finished deterministic tiny run that the read-only tests share."""
    run = tmp_path_factory.mktemp("runs") / "base"
    fit(tiny_cfg(), tiny_data, run, progress=False)
    return run


def test_fit_writes_a_complete_run_folder(base_run):
    run = base_run
    m = json.loads((run / "metrics.json").read_text())
    for name in (
        "config.json",
        "run.json",
        "split.csv",
        "skipped.csv",
        "summary.csv",
        "metrics.json",
        "predictions.csv",
        "checkpoints/model.pt",
        "checkpoints/last.pt",
        "checkpoints/stage-branch1.pt",
        "checkpoints/stage-main.pt",
        "checkpoints/stage-fusion.pt",
    ):
        assert (run / name).exists(), name
    for key in (
        "test_accuracy",
        "val_accuracy",
        "per_class_tpr",
        "confusion",
        "classes",
        "variant",
        "profile",
        "seed",
        "device",
    ):
        assert key in m
    assert m["variant"] == "bigru" and m["profile"] == "tiny" and len(m["classes"]) == 8
    for row in m["confusion"]:
        assert sum(row) == pytest.approx(1.0, abs=1e-5) or sum(row) == 0
    stages = [r["stage"] for r in read_summary(run / "summary.csv")]
    assert stages == ["branch1", "branch2", "branch3", "branch4", "main", "fusion"]  # one epoch each
    assert fit(tiny_cfg(), None, run, resume=True, progress=False) == m  # a finished run is returned as it is
    preds = (run / "predictions.csv").read_text().splitlines()
    assert len(preds) == 1 + m["n_test"] and preds[0].startswith("path,label,pred,correct,p_amusement")


def test_frozen_parameters_are_bit_identical_after_later_stages(base_run):
    run = base_run
    s1 = load_checkpoint(run / "checkpoints/stage-branch1.pt")["model"]
    s2 = load_checkpoint(run / "checkpoints/stage-branch2.pt")["model"]
    final = load_checkpoint(run / "checkpoints/stage-main.pt")["model"]  # the CNN before fusion fine-tunes it
    stage1 = [k for k in s1 if k.startswith(("trunk.stages.0.", "branches.branch1."))]
    assert stage1
    for k in stage1:  # trained in stage 1, frozen (weights and BN statistics) from then on
        assert torch.equal(s1[k], s2[k]) and torch.equal(s1[k], final[k]), k
    stage2 = [k for k in s2 if k.startswith("trunk.stages.1.") and k.endswith("weight")]
    assert any(not torch.equal(s1[k], s2[k]) for k in stage2)  # ... while stage 2 did train


def test_finetuning_changes_the_cnn_in_the_fusion_stage(base_run):
    run = base_run
    main = load_checkpoint(run / "checkpoints/stage-main.pt")["model"]
    final = load_checkpoint(run / "checkpoints/model.pt")["model"]
    assert not torch.equal(main["trunk.stages.0.convs.0.weight"], final["trunk.stages.0.convs.0.weight"])


def test_deterministic_runs_write_identical_metrics(tiny_data, base_run, tmp_path):
    # interrupted at a stage boundary and resumed, the same deterministic run writes the same metrics
    assert fit(tiny_cfg(), tiny_data, tmp_path / "b", progress=False, until="main") == {"stopped_after_stage": "main"}
    fit(tiny_cfg(), None, tmp_path / "b", resume=True, progress=False)
    assert (tmp_path / "b/metrics.json").read_text() == (base_run / "metrics.json").read_text()
    fit(tiny_cfg(**{"train.seed": 1}), tiny_data, tmp_path / "c", progress=False)
    loss = lambda run: [r["train_loss"] for r in read_summary(run / "summary.csv")]
    assert loss(tmp_path / "c") != loss(base_run)  # another seed is another run


def test_interrupted_run_resumes_to_the_same_metrics(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_cfg(**{"train.stage_epochs": 2, "train.fusion_epochs": 2})
    fit(cfg, tiny_data, tmp_path / "full", progress=False)
    with monkeypatch.context() as m, pytest.raises(Killed):
        kill_after_epochs(m, 3)  # inside stage branch2
        fit(cfg, tiny_data, tmp_path / "cut", progress=False)
    assert not (tmp_path / "cut/metrics.json").exists()
    with pytest.raises(RunFolderError, match="--resume"):
        fit(cfg, tiny_data, tmp_path / "cut", progress=False)
    fit(cfg, None, tmp_path / "cut", resume=True, progress=False)
    assert (tmp_path / "cut/metrics.json").read_text() == (tmp_path / "full/metrics.json").read_text()
    assert (tmp_path / "cut/summary.csv").read_text().count("\n") == (tmp_path / "full/summary.csv").read_text().count(
        "\n"
    )


def test_resume_with_another_configuration_is_refused(tiny_data, tmp_path, monkeypatch):
    with monkeypatch.context() as m, pytest.raises(Killed):
        kill_after_epochs(m, 1)
        fit(tiny_cfg(), tiny_data, tmp_path / "r", progress=False)
    with pytest.raises(RunFolderError, match="different configuration"):
        fit(tiny_cfg(**{"model.variant": "gru"}), None, tmp_path / "r", resume=True, progress=False)


def test_non_finite_loss_names_stage_and_epoch_and_keeps_checkpoint(tiny_data, tmp_path, monkeypatch):
    import emotionlib.train as T

    cfg = tiny_cfg(**{"train.stage_epochs": 2})
    calls = {"n": 0}
    real = T.multitask_loss

    def flaky(*a, **k):
        calls["n"] += 1
        loss, parts = real(*a, **k)
        return (loss * float("nan"), parts) if calls["n"] > 12 else (loss, parts)

    monkeypatch.setattr(T, "multitask_loss", flaky)
    with pytest.raises(TrainingError, match=r"stage branch\d, epoch \d"):
        fit(cfg, tiny_data, tmp_path / "nan", progress=False)
    assert (tmp_path / "nan/checkpoints/last.pt").exists()
    assert load_checkpoint(tmp_path / "nan/checkpoints/last.pt")["epoch"] >= 1


def test_any_class_names_and_count(tmp_path):
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    for ci, name in enumerate(["calm", "joy", "rage"]):
        for k in range(12):
            a = np.full((40, 50, 3), 40 + 90 * ci, np.uint8) + rng.integers(0, 30, (40, 50, 3), dtype=np.uint8)
            (tmp_path / "d" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(a).save(tmp_path / "d" / name / f"{k}.jpg")
    m = fit(tiny_cfg(), tmp_path / "d", tmp_path / "run", progress=False)
    assert m["classes"] == ["calm", "joy", "rage"] and len(m["confusion"]) == 3
    model, cfg, classes = load_run(tmp_path / "run")
    assert cfg.model.num_classes == 3 and model(torch.zeros(1, 3, 48, 48)).shape == (1, 3)


def test_checkpoint_with_pickled_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.pt"
    torch.save({"model": Payload()}, bad)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(bad)
    assert not marker.exists()
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")


def test_checkpoint_of_another_architecture_is_named(base_run, tmp_path):
    shutil.copytree(base_run, tmp_path / "r")
    ck = load_checkpoint(tmp_path / "r/checkpoints/model.pt")
    ck["config"]["model"]["num_classes"] = 5
    torch.save(ck, tmp_path / "r/checkpoints/model.pt")
    with pytest.raises(CheckpointError, match="another architecture or class count"):
        load_run(tmp_path / "r")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "emotionlib", *args], capture_output=True, text=True)


def test_cli_train_predict_evaluate_and_errors(tiny_data, base_run, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "--data", str(tiny_data), "--out", str(run), "--profile", "tiny", "--deterministic")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["variant"] == "bigru"
    # the command line resolves the same configuration as the library: bit-identical metrics
    assert (run / "metrics.json").read_text() == (base_run / "metrics.json").read_text()
    img = next((tiny_data / "fear").glob("*.jpg"))
    r = run_cli("predict", "--run", str(run), str(img), str(img))
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert len(lines) == 2 and lines[0]["emotion"] in lines[0]["probabilities"]
    assert sum(lines[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    r = run_cli("evaluate", "--run", str(run))
    assert r.returncode == 0 and "accuracy" in json.loads(r.stdout)
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(
        json.loads((run / "metrics.json").read_text())["test_accuracy"]
    )
    for args, needle in [
        (("train", "--data", str(tiny_data), "--out", str(tmp_path / "x"), "--variant", "nope"), "unknown variant"),
        (("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "y")), "does not exist"),
        (("train", "--data", str(tiny_data), "--out", str(run)), "already exists"),
        (("train", "--data", str(tiny_data), "--out", str(tmp_path / "z"), "--profile", "huge"), "unknown profile"),
        (("train", "--data", str(tiny_data), "--out", str(tmp_path / "w"), "--batch-size", "3"), "batch_size"),
    ]:
        r = run_cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "w").exists()


def test_variants_command_lists_table1():
    r = run_cli("variants")
    assert r.returncode == 0
    for name in ("softmax", "ensemble", "lstm", "bilstm", "gru", "bigru", "bigru4", "bigru6", "max", "avg"):
        assert any(line.startswith(name + " ") for line in r.stdout.splitlines()), name


def test_init_from_trains_only_what_the_base_lacks(tiny_data, base_run, tmp_path):
    base = base_run
    src = load_checkpoint(base / "checkpoints/stage-main.pt")["model"]
    fit(
        tiny_cfg(**{"model.variant": "bigru6", "train.finetune_lr": 0.0}),
        tiny_data,
        tmp_path / "six",
        split_csv=base / "split.csv",
        progress=False,
        init_from=base / "checkpoints/stage-main.pt",
    )
    stages = [r["stage"] for r in read_summary(tmp_path / "six/summary.csv")]
    assert stages == ["branch0", "main", "fusion"]  # branch 1 is the base's, frozen: only branch 0 trains and logs
    six = load_checkpoint(tmp_path / "six/checkpoints/model.pt")["model"]
    for k in src:
        if k.startswith(("trunk.", "branches.branch1.", "branches.branch4.")):
            assert torch.equal(src[k], six[k]), k  # copied and frozen


def test_six_branches_train_branch_0_and_branch_1_one_stage_each(tiny_data, tmp_path):
    """Sec. 4.1's one branch per stage: branch 0 trains with trunk stage 1, then branch 1 on it frozen; each stage
    logs its own head."""
    run = tmp_path / "six"
    fit(tiny_cfg(**{"model.variant": "bigru6"}), tiny_data, run, progress=False, until="branch1")
    assert [r["stage"] for r in read_summary(run / "summary.csv")] == ["branch0", "branch1"]
    first = load_checkpoint(run / "checkpoints/stage-branch0.pt")["model"]
    second = load_checkpoint(run / "checkpoints/stage-branch1.pt")["model"]
    for k in first:
        if k.startswith(("trunk.stages.0.", "branches.branch0.")):
            assert torch.equal(first[k], second[k]), k  # fixed while branch 1 trains (batch-norm statistics too)
    assert not torch.equal(first["branches.branch1.fc_i.0.weight"], second["branches.branch1.fc_i.0.weight"])


def test_one_pass_evaluation_equals_one_pass_per_head(base_run):
    # finish() scores the variant and every branch classifier from one pass; the same numbers as a pass per head
    from emotionlib.data import read_split
    from emotionlib.evaluate import predict_all, predict_probs
    from emotionlib.train import make_loader
    from emotionlib.utils import read_json

    model, cfg, classes = load_run(base_run)
    part = read_split(base_run / "split.csv", root=read_json(base_run / "run.json")["data_root"]).subset("test")
    loader = make_loader(part, classes, cfg, train=False)
    cpu = torch.device("cpu")
    final, per_head, y, idx = predict_all(model, loader, cpu)
    want, wy, widx = predict_probs(model, loader, cpu)
    assert torch.allclose(torch.from_numpy(final), torch.from_numpy(want), atol=1e-6)
    assert (y == wy).all() and (idx == widx).all()
    assert set(per_head) == set(model.feature_keys)
    for k in model.feature_keys:
        assert torch.allclose(
            torch.from_numpy(per_head[k]), torch.from_numpy(predict_probs(model, loader, cpu, k)[0]), atol=1e-6
        ), k
    m = json.loads((base_run / "metrics.json").read_text())
    assert m["branch_test_accuracy_after_fusion"] == {
        k: float((per_head[k].argmax(1) == y).mean()) for k in model.feature_keys
    }
    # centre-only scoring (train.val_crops="centre") is the centre crop, the last of the five, alone
    x, _, _ = next(iter(loader))
    centre = predict_probs(
        model, [(x, torch.zeros(len(x), dtype=torch.long), torch.arange(len(x)))], cpu, centre_only=True
    )[0]
    alone = predict_probs(model, [(x[:, 4], torch.zeros(len(x), dtype=torch.long), torch.arange(len(x)))], cpu)[0]
    assert torch.allclose(torch.from_numpy(centre), torch.from_numpy(alone), atol=1e-6)
    assert not torch.allclose(torch.from_numpy(centre), torch.from_numpy(want[: len(x)]), rtol=0, atol=1e-6)


def test_val_crops_is_checked():
    with pytest.raises(ConfigError, match="train.val_crops"):
        get_config("tiny", **{"train.val_crops": "six"})
