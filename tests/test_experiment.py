"""Table 1 as a controlled experiment: interval and verdict arithmetic, the shared stages, one budget per row."""

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from emotionlib import experiment
from emotionlib.config import get_config
from emotionlib.errors import ConfigError
from emotionlib.experiment import mean_interval, verdict
from emotionlib.synth import generate
from emotionlib.train import load_checkpoint, read_summary
from emotionlib.utils import read_json

T975_2 = 4.302652729911275  # Student t, 2 degrees of freedom, 97.5 % quantile (tables)
T95_2 = 2.919985580355516


# ----------------------------------------------------------------------------- arithmetic on hand-made numbers


def test_mean_interval_is_the_t_interval_over_seeds():
    mean, sd, low, high = mean_interval([70.0, 72.0, 74.0])  # sample sd 2
    half = T975_2 * 2.0 / math.sqrt(3)
    assert (mean, sd, low, high) == pytest.approx((72.0, 2.0, 72.0 - half, 72.0 + half))
    assert mean_interval([70.0, 72.0, 74.0], confidence=0.9)[3] == pytest.approx(72.0 + T95_2 * 2.0 / math.sqrt(3))
    one = mean_interval([71.0])
    assert one[0] == 71.0 and all(math.isnan(x) for x in one[1:])
    assert all(math.isnan(x) for x in mean_interval([]))
    assert mean_interval([5.0, 5.0])[2:] == (5.0, 5.0)  # no spread: the interval is the point


@pytest.mark.parametrize(
    "low, high, kind, expected",
    [
        (0.5, 3.0, "better", "holds"),
        (-3.0, -0.1, "better", "contradicted"),
        (-1.0, 2.0, "better", "undecided"),  # 0 inside the interval
        (0.0, 2.0, "better", "undecided"),  # touching 0 is not above it
        (math.nan, math.nan, "better", "undecided"),  # one seed: no interval
        (-1.5, 1.0, "comparable", "holds"),  # within +-2 points
        (-1.0, 3.0, "comparable", "undecided"),
        (2.5, 6.0, "comparable", "contradicted"),  # wholly outside the margin
        (-6.0, -2.5, "comparable", "contradicted"),
    ],
)
def test_verdict_reads_the_interval(low, high, kind, expected):
    assert verdict(low, high, kind) == expected


def test_verdict_refuses_an_unknown_kind():
    with pytest.raises(ConfigError, match="claim kind"):
        verdict(0.0, 1.0, "worse")


def hand_runs(acc: dict[str, list[float]]) -> pd.DataFrame:
    rows = [
        {
            "variant": v,
            "seed": k,
            "test_acc": a,
            "mean_tpr": a,
            "cnn_epochs": 20,
            "fusion_epochs": 3,
            "finetune_lr": 2e-4,
        }
        for v, accs in acc.items()
        for k, a in enumerate(accs)
    ]
    return pd.DataFrame(rows)


def test_claims_pair_the_seeds_and_give_verdicts():
    runs = hand_runs(
        {
            "bigru": [80.0, 82.0, 84.0],
            "gru": [70.0, 71.0, 75.0],
            "ensemble": [79.0, 83.0, 85.0],
            "bigru6": [80.5, 82.0, 84.5],
        }
    )
    claims = experiment.compare(runs).set_index("comparison")
    # bigru - gru per seed: 10, 11, 9 -> mean 10, sd 1
    row = claims.loc["bigru vs gru"]
    assert row.per_seed == "+10.0 +11.0 +9.0" and row.n_seeds == 3
    assert (row["mean_diff"], row["std"]) == pytest.approx((10.0, 1.0))
    assert (row.ci_low, row.ci_high) == pytest.approx(
        (10 - T975_2 / math.sqrt(3), 10 + T975_2 / math.sqrt(3)), abs=0.01
    )
    assert row.verdict == "holds" and row.paper_FI_diff == pytest.approx(73.03 - 71.33)
    # bigru - ensemble: 1, -1, -1: the interval holds 0
    assert claims.loc["bigru vs ensemble", "verdict"] == "undecided"
    # bigru - bigru6: -0.5, 0, -0.5 -> interval about [-1.05, 0.38]: within +-2 points
    assert claims.loc["bigru vs bigru6", "kind"] == "comparable"
    assert claims.loc["bigru vs bigru6", "verdict"] == "holds"
    assert "bigru vs max" not in claims.index  # a comparison whose rows were not trained is left out


def test_summary_has_one_row_per_variant_with_the_interval():
    runs = hand_runs({"bigru": [80.0, 82.0, 84.0], "softmax": [60.0, 60.0, 63.0]})
    t = experiment.summarise(runs).set_index("variant")
    assert list(t.index) == ["bigru", "softmax"]
    assert t.loc["bigru", "n_seeds"] == 3 and t.loc["bigru", "mean"] == 82.0 and t.loc["bigru", "std"] == 2.0
    assert t.loc["bigru", "ci_low"] == pytest.approx(82 - T975_2 * 2 / math.sqrt(3), abs=0.01)
    assert t.loc["bigru", "paper_FI_acc"] == 73.03 and t.loc["softmax", "fusion_epochs"] == 3
    for col in ("protocol", "table1_row", "ci_high", "cnn_epochs", "finetune_lr"):
        assert col in t.columns


# ----------------------------------------------------------------------------- which stages are shared


def test_shared_stages_are_the_common_prefix_of_the_stage_plans():
    cfg = get_config("tiny")
    with_variant = lambda v: experiment._row_config(cfg, v, 0)  # noqa: E731
    ref = with_variant("bigru")
    assert experiment.shared_stages(ref, with_variant("gru")) == ["branch1", "branch2", "branch3", "branch4", "main"]
    assert experiment.shared_stages(ref, with_variant("ensemble")) == [
        "branch1",
        "branch2",
        "branch3",
        "branch4",
        "main",
    ]
    # 4 branches: pool4 is tapped by no side branch, so its trunk stage trains with the main branch
    assert experiment.shared_stages(ref, with_variant("bigru4")) == ["branch1", "branch2", "branch3"]
    assert experiment.shared_stages(ref, with_variant("bigru6")) == []  # its first stage trains branch 0 as well
    assert experiment.shared_stages(ref, with_variant("softmax")) == []


# ----------------------------------------------------------------------------- the protocol on tiny data


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    data = generate(tmp_path_factory.mktemp("data") / "synth", per_class=8, size=56, progress=False)
    run = tmp_path_factory.mktemp("run")
    cfg = get_config(
        "tiny",
        **{
            "train.device": "cpu",
            "train.deterministic": True,
            "train.stage_epochs": 2,
            "train.fusion_epochs": 2,
            "train.softmax_stages": 5,
        },
    )
    variants = ("softmax", "ensemble", "gru", "bigru", "bigru4", "avg")
    runs = experiment.run_protocol(data, run, cfg, seeds=2, seed=3, variants=variants, log=lambda *_: None)
    return data, run, cfg, runs


def test_every_row_has_the_same_fusion_budget_and_a_seed_each(protocol):
    _, run, _, runs = protocol
    assert sorted(set(runs.seed)) == [3, 4] and len(runs) == 12
    assert set(runs.fusion_epochs) == {2} and set(runs.finetune_lr) == {1e-3}
    for r in runs.itertuples():  # read from each row's own summary.csv, not from the configuration
        summary = read_summary(run / r.folder / "summary.csv")
        assert sum(s["stage"] == "fusion" for s in summary) == 2, r.variant
        cfg = read_json(run / r.folder / "config.json")["config"]
        assert cfg["train"]["seed"] == r.seed and cfg["model"]["variant"] == r.variant
    epochs = runs.groupby("variant").cnn_epochs.first()
    # five greedy stages of 2 epochs; softmax's one stage as long; bigru4 has four stages
    assert epochs["bigru"] == epochs["gru"] == epochs["softmax"] == 10 and epochs["bigru4"] == 8
    assert (run / "table1" / "runs.csv").exists()


def test_rows_share_their_seeds_cnn_stages_exactly_and_nothing_else(protocol):
    _, run, _, runs = protocol
    for k in (3, 4):
        ref = experiment.row_folder(run, k, "bigru", seed=3)
        assert ref == (run / "train" if k == 3 else run / "table1" / f"seed-{k}" / "bigru")
        cnn = load_checkpoint(ref / "checkpoints" / "stage-main.pt")["model"]
        gru = read_json(run / "table1" / f"seed-{k}" / "gru" / "run.json")
        assert Path(gru["init_from"]) == ref / "checkpoints" / "stage-main.pt"
        # bigru4 copies branches 1-3 and their trunk stages, and trains trunk stage 4 itself
        b4 = load_checkpoint(run / "table1" / f"seed-{k}" / "bigru4" / "checkpoints" / "stage-main.pt")["model"]
        assert torch.equal(b4["trunk.stages.0.convs.0.weight"], cnn["trunk.stages.0.convs.0.weight"])
        assert torch.equal(b4["branches.branch3.fc_i.0.weight"], cnn["branches.branch3.fc_i.0.weight"])
        assert torch.equal(b4["trunk.stages.2.convs.1.running_var"], cnn["trunk.stages.2.convs.1.running_var"])
        assert not torch.equal(b4["trunk.stages.3.convs.0.weight"], cnn["trunk.stages.3.convs.0.weight"])
    # the two seeds trained different CNNs on one split
    a = load_checkpoint(run / "train" / "checkpoints" / "stage-main.pt")["model"]
    b = load_checkpoint(run / "table1" / "seed-4" / "bigru" / "checkpoints" / "stage-main.pt")["model"]
    assert not torch.equal(a["trunk.stages.0.convs.0.weight"], b["trunk.stages.0.convs.0.weight"])
    assert (run / "train" / "split.csv").read_text() == (run / "table1" / "seed-4" / "bigru" / "split.csv").read_text()


def test_a_rerun_reads_the_finished_rows_back(protocol):
    data, run, cfg, runs = protocol
    again = experiment.run_protocol(
        data,
        run,
        cfg,
        seeds=2,
        seed=3,
        variants=("softmax", "ensemble", "gru", "bigru", "bigru4", "avg"),
        log=lambda *_: None,
    )
    pd.testing.assert_frame_equal(runs, again)
    assert experiment.seed_cnns(run, 3, 2).keys() == {3, 4}


def test_branch_accuracies_at_their_own_stage_and_after_fusion(protocol):
    _, run, _, _ = protocol
    m = read_json(run / "train" / "metrics.json")
    assert (
        set(m["branch_test_accuracy_at_stage"])
        == set(m["branch_test_accuracy_after_fusion"])
        == {"branch1", "branch2", "branch3", "branch4", "main"}
    )
    # a row that copied its CNN stages has no stage checkpoints of its own to score
    assert read_json(run / "table1" / "seed-3" / "gru" / "metrics.json")["branch_test_accuracy_at_stage"] == {}
    b4 = read_json(run / "table1" / "seed-3" / "bigru4" / "metrics.json")["branch_test_accuracy_at_stage"]
    assert set(b4) == {"branch1", "branch2", "branch3", "main"}
    # the branches are frozen after their own stage: stage-main.pt scores them as notebook.branch_accuracy does
    from emotionlib import notebook

    acc = notebook.branch_accuracy(run / "train", "stage-main.pt", "cpu")["test_acc"].to_dict()
    assert acc == pytest.approx(m["branch_test_accuracy_at_stage"])


def test_bad_seed_count_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="seeds=0"):
        experiment.run_protocol(tmp_path, tmp_path / "run", get_config("tiny"), seeds=0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "0"], "--seeds 0: give at least 1"),
        (["--set", "train.lr"], "--set 'train.lr': use SECTION.NAME=VALUE"),
        (["--variants", "bigruu"], "unknown variant 'bigruu'"),
    ],
)
def test_table1_command_refuses_bad_arguments_in_one_line(tmp_path, capsys, args, message):
    from emotionlib import cli

    assert cli.main(["table1", "--out", str(tmp_path / "run"), "--profile", "tiny", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emotionlib table1: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_shared_test_split_widens_the_interval(tmp_path):
    """Three seeds that differ by exactly the same 2 of 10 images: sd 0, but not a zero-width interval."""
    truth = [1] * 10
    rows = []
    for k in range(3):
        for v, correct in (("gru", [1] * 8 + [0, 0]), ("lstm", [1] * 6 + [0] * 4)):
            folder = tmp_path / f"seed-{k}" / v
            folder.mkdir(parents=True)
            pd.DataFrame({"path": [f"img{i}.jpg" for i in range(10)], "correct": correct}).to_csv(
                folder / "predictions.csv", index=False
            )
            rows.append({"variant": v, "seed": k, "test_acc": 10.0 * sum(correct), "folder": f"seed-{k}/{v}"})
    runs = pd.DataFrame(rows)
    plain = experiment.compare(runs).set_index("comparison").loc["gru vs lstm"]
    assert plain["std"] == 0 and (plain.ci_low, plain.ci_high) == (20.0, 20.0) and plain.verdict == "holds"
    shared = experiment.compare(runs, run_dir=tmp_path).set_index("comparison").loc["gru vs lstm"]
    # b = 2 images right in gru only, c = 0, N = 10: ((2/10) - (2/10)^2) / 10 = 0.016 -> se 12.65 points
    assert shared.test_se == pytest.approx(100 * math.sqrt(0.016), abs=0.01)
    assert shared.ci_low == pytest.approx(20 - T975_2 * 100 * math.sqrt(0.016), abs=0.02)
    assert shared.verdict == "undecided" and len(truth) == 10


# ----------------------------------------------------------------------------- the report's verdicts (notebook 08)


def _claims(verdicts):
    return pd.DataFrame(
        {
            "comparison": [f"{a} vs {b}" for a, b in zip(("bigru", "bigru", "gru"), ("gru", "ensemble", "lstm"))],
            "n_seeds": 3,
            "verdict": verdicts,
        }
    )


@pytest.mark.parametrize(
    "verdicts, expected",
    [
        (["holds", "holds", "undecided"], "supported"),  # only the Bi-GRU's own comparisons decide the headline
        (["holds", "contradicted", "holds"], "contradicted"),
        (["holds", "undecided", "holds"], "undecided"),
    ],
)
def test_table1_verdict_is_the_bigru_rows_comparisons(verdicts, expected):
    out = experiment.table1_verdict(_claims(verdicts))
    assert out["verdict"] == expected
    assert "3 paired comparisons over 3 seeds" in out["evidence"]
    assert experiment.table1_verdict(None)["verdict"] == "not testable on this data"


def test_report_verdict_speaks_the_reports_vocabulary():
    assert [experiment.report_verdict(v) for v in experiment.VERDICTS] == ["supported", "contradicted", "undecided"]
    assert set(experiment.REPORT_VERDICTS) >= {"supported", "contradicted", "undecided", "not testable on this data"}
    with pytest.raises(ConfigError):
        experiment.report_verdict("maybe")


def _probe(shallow_gain, deep_gain):
    rows = []
    for k, (gs, gd) in enumerate(zip(shallow_gain, deep_gain)):
        for level, gain in (("FC_1 (pool1)", gs), ("FC_4 (pool4)", gd), ("FC_5 (main)", 0.5)):
            rows += [
                {"source": "trained", "level": level, "cue": "shape", "seed": k, "accuracy": 0.5 + gain},
                {"source": "random init", "level": level, "cue": "shape", "seed": k, "accuracy": 0.5},
            ]
    return pd.DataFrame(rows)


def test_fig3_verdict_pairs_the_deep_and_shallow_gains_per_seed():
    assert experiment.fig3_verdict(_probe([0.0, 0.01, 0.02], [0.2, 0.21, 0.23]))["verdict"] == "supported"
    assert experiment.fig3_verdict(_probe([0.2, 0.21, 0.23], [0.0, 0.01, 0.02]))["verdict"] == "contradicted"
    assert experiment.fig3_verdict(_probe([0.0, 0.2, 0.0], [0.1, 0.0, 0.1]))["verdict"] == "undecided"
    assert experiment.fig3_verdict(None)["verdict"] == "not testable on this data"  # FI records no cues


def _fig6_run(tmp_path, counts, tprs):
    """A run folder with a train split of `counts` images per class and, per seed, the Bi-GRU's and the ensemble's
    per-class TPR."""
    from emotionlib.utils import write_json

    labels = [c for c, n in counts.items() for _ in range(n)]
    (tmp_path / "train").mkdir(parents=True)
    pd.DataFrame({"path": [f"{i}.jpg" for i in range(len(labels))], "label": labels, "split": "train"}).to_csv(
        tmp_path / "train" / "split.csv", index=False
    )
    for k, (a, b) in enumerate(tprs):
        for variant, tpr in (("bigru", a), ("ensemble", b)):
            folder = experiment.row_folder(tmp_path, k, variant, 0)
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / "metrics.json", {"per_class_tpr": {"anger": tpr, "fear": 0.9}})
    return tmp_path


def test_fig6_verdict_needs_rare_classes(tmp_path):
    tprs = [(0.5, 0.3), (0.52, 0.31), (0.55, 0.3)]  # the Bi-GRU's worst class clearly better on every seed
    balanced = experiment.fig6_verdict(_fig6_run(tmp_path / "a", {"anger": 100, "fear": 100}, tprs), 0, 3)
    assert balanced["verdict"] == "not testable on this data" and "no rare classes" in balanced["evidence"]
    rare = experiment.fig6_verdict(_fig6_run(tmp_path / "b", {"anger": 20, "fear": 100}, tprs), 0, 3)
    assert rare["verdict"] == "supported"


def test_fig7_verdict_pairs_ours_with_the_best_baseline_per_fold():
    def metrics(ours, a, b):
        return {
            "methods": {
                "ours": {"label": "ours", "fold_mean_ova_tpr": ours},
                "handcrafted-svm": {"label": "hand", "fold_mean_ova_tpr": a},
                "alexnet-svm": {"label": "alex", "fold_mean_ova_tpr": b},
            }
        }

    # ours beats the weaker baseline everywhere but not the stronger one: the best baseline per fold decides
    assert (
        experiment.fig7_verdict(metrics([0.8, 0.82, 0.81], [0.6, 0.6, 0.6], [0.79, 0.84, 0.8]))["verdict"]
        == "undecided"
    )
    assert (
        experiment.fig7_verdict(metrics([0.9, 0.92, 0.91], [0.6, 0.6, 0.6], [0.7, 0.72, 0.7]))["verdict"] == "supported"
    )
    assert experiment.fig7_verdict(None)["verdict"] == "not testable on this data"
