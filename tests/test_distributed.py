"""DistributedDataParallel on two CPU processes (gloo): gradients averaged exactly, unused parameters left alone,
and `torchrun -m emotionlib train` writing one complete run folder from rank 0."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from emotionlib.config import get_config
from emotionlib.distributed import Dist, init
from emotionlib.model import UnifiedCNNRNN
from emotionlib.synth import generate
from emotionlib.train import StageStep, all_stages, make_optimizers, read_summary, set_trainable

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_single_process_is_a_no_op(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    d = init("cpu")
    assert d == Dist() and not d.enabled and d.is_main
    m = torch.nn.Linear(2, 2)
    assert d.wrap(m) is m and d.broadcast({"a": 1}) == {"a": 1} and d.on_main(lambda: 7) == 7
    assert d.all_sum([1.0, 2.5], torch.device("cpu")) == [1.0, 2.5]
    d.barrier()
    d.check_in_sync(m, torch.device("cpu"))
    d.close()


# One training step of each of two stages on every rank's own batch, through Dist.wrap; every rank saves its gradients.
WORKER = textwrap.dedent("""
    import sys, torch
    from emotionlib.config import get_config
    from emotionlib.distributed import init
    from emotionlib.model import UnifiedCNNRNN
    from emotionlib.train import StageStep, all_stages, make_optimizers, set_trainable
    dist = init("cpu")
    cfg = get_config("tiny")
    for stage_index in (0, -1):
        torch.manual_seed(0)
        model = UnifiedCNNRNN(cfg.model)
        stage = all_stages(model)[stage_index]
        _, modules = make_optimizers(model, stage, cfg)
        set_trainable(model, modules)
        step = dist.wrap(StageStep(model, stage), find_unused_parameters=stage.name == "fusion")
        g = torch.Generator().manual_seed(10 + dist.rank)
        x, y = torch.randn(4, 3, 48, 48, generator=g), torch.randint(8, (4,), generator=g)
        torch.manual_seed(100 + dist.rank)  # dropout
        out = step(x)
        logits = out if stage.name == "fusion" else out[stage.heads[0]][1]
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        torch.save(grads, f"{sys.argv[1]}/{stage.name}-rank{dist.rank}.pt")
    dist.close()
""")


def reference_grads(stage_index: int) -> dict[str, torch.Tensor | None]:
    """The same step in one process on both batches, gradients averaged: what DDP must produce."""
    cfg = get_config("tiny")
    grads = []
    for rank in (0, 1):
        torch.manual_seed(0)
        model = UnifiedCNNRNN(cfg.model)
        stage = all_stages(model)[stage_index]
        _, modules = make_optimizers(model, stage, cfg)
        set_trainable(model, modules)
        g = torch.Generator().manual_seed(10 + rank)
        x, y = torch.randn(4, 3, 48, 48, generator=g), torch.randint(8, (4,), generator=g)
        torch.manual_seed(100 + rank)
        out = StageStep(model, stage)(x)
        logits = out if stage.name == "fusion" else out[stage.heads[0]][1]
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    return {n: None if g is None else (g + grads[1][n]) / 2 for n, g in grads[0].items()}


def test_ddp_step_averages_the_ranks_gradients(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    r = subprocess.run([*TORCHRUN, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage_index, name in ((0, "branch1"), (-1, "fusion")):
        ref = reference_grads(stage_index)
        ranks = [torch.load(tmp_path / f"{name}-rank{k}.pt") for k in (0, 1)]
        assert set(ranks[0]) == set(ranks[1]) == set(ref)
        for param, want in ref.items():
            if want is None:  # a branch classifier in the fusion stage: outside the loss, never touched by DDP
                assert ranks[0][param] is None and ranks[1][param] is None, param
                continue
            assert torch.equal(ranks[0][param], ranks[1][param]), param  # one all-reduce: the same bits everywhere
            assert torch.allclose(ranks[0][param], want, rtol=1e-4, atol=1e-6), param
        unused = [n for n, g in ref.items() if g is None]
        if name == "fusion":  # the CNN is fine-tuned too, but Eq. 11 never reads the branch classifiers
            assert unused and all(".classifier." in n for n in unused) and any(n.startswith("head.") for n in ref)
        else:  # stage 1: trunk stage 1 and branch 1 only
            assert not unused and {n.split(".")[0] + "." + n.split(".")[1] for n in ref} == {
                "trunk.stages",
                "branches.branch1",
            }


def json_objects(text: str) -> list[dict]:
    """The JSON objects the ranks printed: two processes share stdout, so two lines may run together."""
    dec, out, i = json.JSONDecoder(), [], text.find("{")
    while i != -1:
        obj, end = dec.raw_decode(text, i)
        out.append(obj)
        i = text.find("{", end)
    return out


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", per_class=10, size=64, seed=3, progress=False)


def test_torchrun_trains_a_complete_run_with_one_writer(tiny_data, tmp_path):
    run = tmp_path / "run"
    r = subprocess.run(
        [
            *TORCHRUN,
            "-m",
            "emotionlib",
            "train",
            "--profile",
            "tiny",
            "--data",
            str(tiny_data),
            "--out",
            str(run),
            "--epochs",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = json_objects(r.stdout)
    assert len(lines) == 1  # every rank returns the metrics; only rank 0 prints them
    m = json.loads((run / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "val_accuracy",
        "per_class_tpr",
        "mean_tpr",
        "confusion",
        "classes",
        "branch_test_accuracy_after_fusion",
        "branch_test_accuracy_at_stage",
        "n_train",
        "n_test",
    ):
        assert key in m, key
    assert 0 <= m["test_accuracy"] <= 1 and m["test_accuracy"] == lines[0]["test_accuracy"]
    assert all(0 <= v <= 1 for v in m["branch_test_accuracy_after_fusion"].values())
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    rows = read_summary(run / "summary.csv")
    # one writer: every stage's epochs exactly once, in order (and the ranks still agreed after two epochs each)
    stages = ("branch1", "branch2", "branch3", "branch4", "main", "fusion")
    assert [(r["stage"], r["epoch"]) for r in rows] == [(s, e) for s in stages for e in ("1", "2")]
    # each row counts both ranks' images: 64 training images, 4 batches of 8 on each of the 2 ranks
    for row in rows:
        assert abs(float(row["images_per_s"]) * float(row["seconds"]) - 64) < 2, row
    for name in ("model.pt", "last.pt", "stage-branch1.pt", "stage-main.pt", "stage-fusion.pt"):
        assert (run / "checkpoints" / name).exists(), name
    assert not [p for p in run.rglob("*.tmp")]
    preds = (run / "predictions.csv").read_text().splitlines()
    assert len(preds) == 1 + m["n_test"]
