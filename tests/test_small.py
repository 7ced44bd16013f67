"""The small-dataset protocol of Sec. 4.4: folds, one against all without leakage, TPR by hand, the exclusion of
small classes (IAPS anger), the whole protocol on tiny data, and the command line's errors."""

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotionlib import small as S
from emotionlib.cli import main
from emotionlib.config import get_config
from emotionlib.data import DatasetIndex, Sample
from emotionlib.errors import ConfigError, DataError, RunFolderError
from emotionlib.synth import CLASSES, generate
from emotionlib.train import fit


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A finished tiny run on a 'large' synthetic set: the model the protocol starts from."""
    base = tmp_path_factory.mktemp("large")
    data = generate(base / "synth", per_class=4, size=64, seed=3, progress=False)
    fit(get_config("tiny", **{"train.deterministic": True}), data, base / "run", progress=False)
    return base / "run"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """ArtPhoto layout, another seed and shifted nuisances; anger keeps 3 of its 5 images (like IAPS anger)."""
    root = generate(
        tmp_path_factory.mktemp("small") / "art",
        per_class=5,
        size=64,
        seed=11,
        shift=0.5,
        layout="artphoto",
        progress=False,
    )
    for k in (4, 5):
        (root / f"anger_{k}.jpg").unlink()
    return root


# ----------------------------------------------------------------------------- folds, leakage, TPR


def test_folds_are_stratified_and_every_image_is_in_exactly_one_test_fold():
    y = np.repeat([0, 1, 2], [10, 5, 15])
    fold = S.stratified_folds(y, 5, seed=0)
    assert fold.shape == (30,) and set(fold) == set(range(5))  # one test fold per image, none left out
    for k in range(5):
        assert list(np.bincount(y[fold == k], minlength=3)) == [2, 1, 3]  # each class in proportion
    assert (S.stratified_folds(y, 5, seed=0) == fold).all() and (S.stratified_folds(y, 5, seed=1) != fold).any()


class Memoriser:
    """Scores 1 for the label of a training row it has seen, else -1 everywhere: a test image it was trained on
    would show."""

    def fit(self, x, y):
        self.seen = {float(a): int(b) for a, b in zip(x[:, 0], y)}
        self.classes_ = np.unique(y)
        return self

    def decision_function(self, x):
        return np.array([[1.0 if self.seen.get(float(a)) == c else -1.0 for c in self.classes_] for a in x[:, 0]])


def test_no_test_image_is_seen_in_training():
    y = np.repeat([0, 1], 10)
    x = np.arange(20, dtype=float)[:, None]  # every image unique
    scores = S.cross_validated_scores(x, y, S.stratified_folds(y, 5), make_classifier=lambda seed: Memoriser())
    assert scores.shape == (20, 2) and (scores == -1).all()


# A toy problem: 3 classes, 9 images. Each class's binary classifier says yes where its score is positive; the
# n-way decision is the highest score. Image 4 (class b) is claimed by no classifier, image 6 (class c) by two.
TOY_Y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
TOY_SCORES = np.array(
    [
        [2.0, -1, -1],
        [-1, 0.5, -2],
        [1, -1, 0.5],
        [-1, 1, -1],
        [-3, -0.5, -1],
        [1, -1, -2],
        [-1, 0.5, 2],
        [-2, 1, -1],
        [-1, -1, 1],
    ]
)
TOY_FOLD = np.array([0, 1, 2, 0, 1, 0, 1, 2, 0])


def test_one_against_all_rate_by_hand_and_as_balanced_accuracy_per_class():
    """Sec. 4.4's rate (Machajdik & Hanbury): each class's own binary task, TPR and TNR averaged; chance 0.5."""
    from sklearn.metrics import balanced_accuracy_score

    from emotionlib.evaluate import one_against_all_tpr

    binary = TOY_SCORES > 0
    # a: positives 0,1,2 -> yes, no, yes (2/3); negatives 3..8 -> 5 of 6 say no (image 5 says yes): (2/3 + 5/6) / 2
    # b: positives 3,4 -> yes, no (1/2); negatives -> images 1, 6, 7 say yes, 4 of 7 say no: (1/2 + 4/7) / 2
    # c: positives 5..8 -> no, yes, no, yes (2/4); negatives -> image 2 says yes, 4 of 5 say no: (1/2 + 4/5) / 2
    by_hand = [(2 / 3 + 5 / 6) / 2, (1 / 2 + 4 / 7) / 2, (1 / 2 + 4 / 5) / 2]
    rate = one_against_all_tpr(TOY_Y, binary, 3)
    np.testing.assert_allclose(rate, by_hand)
    np.testing.assert_allclose(rate, [balanced_accuracy_score(TOY_Y == c, binary[:, c]) for c in range(3)])
    # a classifier that ignores the image scores 0.5 on its task, whatever it answers and however many classes
    for constant in (True, False):
        np.testing.assert_allclose(one_against_all_tpr(TOY_Y, np.full((9, 3), constant), 3), 0.5)


def test_both_rates_per_class_by_hand():
    s = S.tpr_summary(TOY_Y, TOY_SCORES, TOY_FOLD, ["a", "b", "c"])
    assert s["per_class_ova_tpr"] == pytest.approx(
        {"a": (2 / 3 + 5 / 6) / 2, "b": (1 / 2 + 4 / 7) / 2, "c": (1 / 2 + 4 / 5) / 2}
    )
    # the n-way decisions (highest score): a b a | b b | a c b c
    assert s["per_class_recall"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 2 / 4})
    assert s["mean_recall"] == pytest.approx((2 / 3 + 1 + 0.5) / 3) and s["accuracy"] == pytest.approx(6 / 9)
    assert s["mean_ova_tpr"] == pytest.approx(np.mean(list(s["per_class_ova_tpr"].values())))
    assert s["confusion"][2] == pytest.approx([0.25, 0.25, 0.5])
    # fold 0 holds y 0,1,2,2 decided 0,1,0,2: recall 1, 1, 1/2
    assert s["fold_mean_recall"][0] == pytest.approx((1 + 1 + 0.5) / 3)
    # fold 0, binary: a says yes to 0 and 5 -> (1 + 2/3) / 2; b yes to 3 only -> 1; c yes to 8 only -> (1/2 + 1) / 2
    assert s["fold_mean_ova_tpr"][0] == pytest.approx(((1 + 2 / 3) / 2 + 1 + 3 / 4) / 3)


def test_binary_decisions_are_each_classifiers_own_predict():
    """`scores > 0` is what each one-against-all classifier's predict says (logistic units and linear SVMs)."""
    from emotionlib.baselines import linear_fc, linear_svm

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)), np.repeat([0, 1, 2], 20)
    for make in (linear_fc, linear_svm):
        clf = make(0).fit(x, y)
        own = np.column_stack([e.predict(clf[:-1].transform(x)) for e in clf[-1].estimators_]).astype(bool)
        assert (own == (clf.decision_function(x) > 0)).all()


def test_each_metric_is_labelled_with_its_chance():
    assert S.METRICS[0] == "ova_tpr"  # the default of the table and the chart
    assert S.metric_chance("ova_tpr", 8) == 0.5 and S.metric_chance("recall", 8) == 1 / 8
    assert "chance 0.5" in S.metric_label("ova_tpr", 8) and "8-way" in S.metric_label("recall", 8)
    assert "chance 1/7" in S.metric_label("recall", 7)
    with pytest.raises(ConfigError, match="metric='accuracy'"):
        S.load_table(".", "accuracy")
    import matplotlib.pyplot as plt

    table = pd.DataFrame([[0.6] * 8], index=pd.Index(["ours"], name="method"), columns=[*"abcdefg", "mean"])
    for metric, chance in (("ova_tpr", 0.5), ("recall", 1 / 7)):  # the chart's dashed line is its metric's chance
        fig = S.plot_tpr(table, metric=metric)
        ax = fig.axes[0]
        assert [tuple(line.get_ydata()) for line in ax.lines] == [(chance, chance)]
        assert ax.get_title().startswith(S.metric_label(metric, 7))
        plt.close(fig)


def test_classes_below_the_minimum_are_left_out_with_a_warning_naming_them(tmp_path):
    samples = [
        Sample(tmp_path / f"{c}{i}.jpg", c) for c, n in (("anger", 8), ("fear", 10), ("awe", 12)) for i in range(n)
    ]
    index = DatasetIndex(tmp_path, ["anger", "awe", "fear"], samples)
    with pytest.warns(UserWarning, match=r"leaving out class 'anger': 8 image\(s\) < min_count=10"):
        kept, excluded = S.exclude_small_classes(index, 10)
    assert excluded == {"anger": 8} and kept.classes == ["awe", "fear"] and len(kept.samples) == 22
    with pytest.warns(UserWarning), pytest.raises(DataError, match="1 class"):
        S.exclude_small_classes(index, 11)


def test_iaps_layout_leaves_out_anger_with_eight_images(tmp_path, make_image):
    root = tmp_path / "IAPS"
    neg = [("A", 8, 1000), ("F", 10, 2000)]
    for code, n, start in neg:
        for i in range(n):
            make_image(root / "images" / f"{start + i}.jpg", size=(16, 16))
    for i in range(10):
        make_image(root / "images" / f"{3000 + i}.jpg", size=(16, 16))
    rows = [f"{start + i},{code}" for code, n, start in neg for i in range(n)]
    (root / "mikels_negative.csv").write_text("IAPS,Category\n" + "\n".join(rows) + "\n")
    pos = [f"{3000 + i},5.0,1.0,2.0,3.0" for i in range(10)]
    (root / "mikels_positive.csv").write_text(
        "IAPS,AmusementMean,AweMean,ContentmentMean,ExcitementMean\n" + "\n".join(pos) + "\n"
    )
    index = S.open_small_dataset(root, "iaps")
    assert index.counts() == {"amusement": 10, "anger": 8, "fear": 10}
    with pytest.warns(UserWarning, match="'anger'"):
        kept, excluded = S.exclude_small_classes(index, 10)
    assert kept.classes == ["amusement", "fear"] and excluded == {"anger": 8}


def test_our_features_are_the_input_of_the_last_fc(pretrained):
    """H of the Bi-GRU (Eq. 10): the layer the protocol replaces maps it to the model's own output."""
    import torch

    from emotionlib.train import load_run

    model, cfg, _ = load_run(pretrained)
    x = torch.randn(3, 3, cfg.data.crop, cfg.data.crop)
    with torch.no_grad():
        h = S.unified_features(model)(x)
        torch.testing.assert_close(model.head.fc(h), model(x))
    assert h.shape == (3, 2 * cfg.model.rnn_hidden)


def test_with_a_top_fc_our_features_are_its_output():
    """model.top_fc: the last FC reads the top FC's 512 (here fused_feature) outputs, not H."""
    import torch

    from emotionlib.model import UnifiedCNNRNN

    cfg = get_config("tiny", **{"model.top_fc": True})
    model = UnifiedCNNRNN(cfg.model).eval()
    x = torch.randn(2, 3, cfg.data.crop, cfg.data.crop)
    with torch.no_grad():
        h = S.unified_features(model)(x)
        torch.testing.assert_close(model.head.fc(h), model(x))
    assert h.shape == (2, cfg.model.fused_feature)


# ----------------------------------------------------------------------------- the whole protocol


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_protocol_end_to_end(pretrained, small_data, tmp_path, monkeypatch):
    out = tmp_path / "small"
    with pytest.warns(UserWarning, match="'anger'"):
        m = S.run_small(pretrained, small_data, out, folds=5, min_count=5, alexnet_weights="none", progress=False)
    kept = [c for c in CLASSES if c != "anger"]
    assert m["classes"] == kept and m["excluded_classes"] == {"anger": 3} and m["n_images"] == 35
    folds = _rows(out / "folds.csv")
    assert len({r["path"] for r in folds}) == len(folds) == 35  # every image once
    for k in range(5):  # 5 images per class, 5 folds: one of each class in every test fold
        assert sorted(r["label"] for r in folds if r["fold"] == str(k)) == sorted(kept)
    assert [m["methods"][k]["feature_dim"] for k in S.DEFAULT_METHODS] == [32, 46, 4096]  # Bi-GRU H: 2 x 16
    tables = {k: S.load_table(out, k) for k in S.METRICS}
    for table in tables.values():
        assert list(table.columns) == [*kept, "mean"] and len(table) == 3
        np.testing.assert_allclose(table["mean"], table[kept].mean(axis=1))
    assert "AlexNet fc7 (random init)" in tables["ova_tpr"].index and m["methods"]["alexnet-svm"]["pretrained"] is False
    assert m["metrics"]["ova_tpr"]["chance"] == 0.5 and m["metrics"]["recall"]["chance"] == 1 / 7
    preds = _rows(out / "predictions.csv")
    for key, r in m["methods"].items():  # each table is its rate of the cross-validated decisions
        for c in kept:
            positive = [c in p[f"{key}:positive"].split("|") for p in preds if p["label"] == c]
            negative = [c not in p[f"{key}:positive"].split("|") for p in preds if p["label"] != c]
            ova = (np.mean(positive) + np.mean(negative)) / 2
            assert (
                tables["ova_tpr"].loc[r["label"], c] == pytest.approx(ova) == pytest.approx(r["per_class_ova_tpr"][c])
            )
            hits = [p[key] == c for p in preds if p["label"] == c]
            assert (
                tables["recall"].loc[r["label"], c]
                == pytest.approx(np.mean(hits))
                == pytest.approx(r["per_class_recall"][c])
            )
    summary = S.summary_table(m)
    assert list(summary.index) == [*tables["ova_tpr"].index, "chance"]
    assert list(summary.loc["chance"]) == [0.5, 1 / 7]
    for k in S.METRICS:
        assert (out / f"fig7_{k}.png").stat().st_size > 0 and (out / f"fig7_{k}.pdf").exists()
    assert "without printed numbers" in m["paper_note"] and "Fig. 7" in m["paper_note"]
    # rerunning into the finished folder returns its results without computing anything
    monkeypatch.setattr(S, "five_crop_features", lambda *a, **k: pytest.fail("recomputed"))
    spelt_otherwise = pretrained.parent / ".." / pretrained.parent.name / pretrained.name
    again = S.run_small(spelt_otherwise, small_data, out, folds=5, min_count=5, alexnet_weights="none")
    assert again["methods"] == m["methods"]
    with pytest.raises(RunFolderError, match="holds a protocol run with other folds"):
        S.run_small(pretrained, small_data, out, folds=4, min_count=5, alexnet_weights="none")


def test_arguments_are_checked_before_anything_is_written(pretrained, small_data, tmp_path):
    out = tmp_path / "o"
    for kw, err, needle in (
        ({"folds": 1}, ConfigError, "at least 2 folds"),
        ({"min_count": 3}, ConfigError, "--min-count 3 is below --folds 5"),
        ({"methods": ["mldrnet"]}, ConfigError, "--methods mldrnet"),
        ({"layout": "flickr"}, ConfigError, "--layout 'flickr'"),
        ({"alexnet_weights": tmp_path / "none.pth"}, Exception, "none.pth does not exist"),
    ):
        with pytest.raises(err, match=needle):
            S.run_small(pretrained, small_data, out, **kw)
    assert not out.exists()


def test_cli_errors_are_one_line_with_exit_code_2(pretrained, small_data, tmp_path, capsys):
    cases = (
        (["--run", str(tmp_path / "norun"), "--data", str(small_data)], "norun does not exist"),
        (["--run", str(pretrained), "--data", str(tmp_path / "nodata")], "nodata does not exist"),
        (["--run", str(small_data), "--data", str(small_data)], "holds no trained model"),
    )
    for argv, needle in cases:
        rc = main(["small", *argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and needle in err and err.startswith("emotionlib small: error:")
    assert not (tmp_path / "out").exists()


def test_stand_in_note_only_when_real_large_data_meets_the_synthetic_small_set(tmp_path):
    synth_large, synth_small, fi, art = (tmp_path / n for n in ("synthetic", "synthetic-small", "FI", "ArtPhoto"))
    for d in (synth_large, synth_small, fi, art):
        d.mkdir()
    for d in (synth_large, synth_small):
        (d / "synth_meta.json").write_text("{}")
    note = S.stand_in_note(fi, synth_small)
    assert note.startswith("The model was trained on FI, real data, but the small dataset here is the built-in")
    assert "--small-data" in note
    assert S.stand_in_note(synth_large, synth_small) is None and S.stand_in_note(fi, art) is None
