"""The small-dataset protocol of Sec. 4.4: folds, one against all without leakage, TPR by hand, the exclusion of
small classes (IAPS anger), the whole protocol on tiny data, and the command line's errors."""
import csv
import json
import shutil
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
    root = generate(tmp_path_factory.mktemp("small") / "art", per_class=5, size=64, seed=11, shift=0.5,
                    layout="artphoto", progress=False)
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
    """Predicts the label of a training row it has seen, else -7: a test image it was trained on would show."""

    def fit(self, x, y):
        self.seen = {float(a): int(b) for a, b in zip(x[:, 0], y)}
        return self

    def predict(self, x):
        return np.array([self.seen.get(float(a), -7) for a in x[:, 0]])


def test_no_test_image_is_seen_in_training():
    y = np.repeat([0, 1], 10)
    x = np.arange(20, dtype=float)[:, None]  # every image unique
    pred = S.cross_validated_predictions(x, y, S.stratified_folds(y, 5), make_classifier=lambda seed: Memoriser())
    assert (pred == -7).all()


def test_true_positive_rate_per_class_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 0, 1, 1, 0, 2, 1, 2])
    fold = np.array([0, 1, 2, 0, 1, 0, 1, 2, 0])
    s = S.tpr_summary(y, pred, fold, ["a", "b", "c"])
    assert s["per_class_tpr"] == pytest.approx({"a": 2 / 3, "b": 1.0, "c": 2 / 4})
    assert s["mean_tpr"] == pytest.approx((2 / 3 + 1 + 0.5) / 3) and s["accuracy"] == pytest.approx(6 / 9)
    assert s["confusion"][2] == pytest.approx([0.25, 0.25, 0.5])
    # fold 0 holds y 0,1,2,2 predicted 0,1,0,2: TPR 1, 1, 1/2
    assert s["fold_mean_tpr"][0] == pytest.approx((1 + 1 + 0.5) / 3)


def test_classes_below_the_minimum_are_left_out_with_a_warning_naming_them(tmp_path):
    samples = [Sample(tmp_path / f"{c}{i}.jpg", c) for c, n in (("anger", 8), ("fear", 10), ("awe", 12)) for i in range(n)]
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
    (root / "mikels_positive.csv").write_text("IAPS,AmusementMean,AweMean,ContentmentMean,ExcitementMean\n"
                                              + "\n".join(pos) + "\n")
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
    table = pd.read_csv(out / "tpr.csv", index_col="method")
    assert list(table.columns) == [*kept, "mean"] and len(table) == 3
    assert "AlexNet fc7 (random init)" in table.index and m["methods"]["alexnet-svm"]["pretrained"] is False
    np.testing.assert_allclose(table["mean"], table[kept].mean(axis=1))
    preds = _rows(out / "predictions.csv")
    for key, r in m["methods"].items():  # the table is the TPR of the cross-validated predictions
        for c in kept:
            hits = [p[key] == c for p in preds if p["label"] == c]
            assert table.loc[r["label"], c] == pytest.approx(np.mean(hits)) == pytest.approx(r["per_class_tpr"][c])
    assert (out / "fig7_tpr.png").stat().st_size > 0 and (out / "fig7_tpr.pdf").exists()
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
    for kw, err, needle in (({"folds": 1}, ConfigError, "at least 2 folds"),
                            ({"min_count": 3}, ConfigError, "--min-count 3 is below --folds 5"),
                            ({"methods": ["mldrnet"]}, ConfigError, "--methods mldrnet"),
                            ({"layout": "flickr"}, ConfigError, "--layout 'flickr'"),
                            ({"alexnet_weights": tmp_path / "none.pth"}, Exception, "none.pth does not exist")):
        with pytest.raises(err, match=needle):
            S.run_small(pretrained, small_data, out, **kw)
    assert not out.exists()


def test_cli_errors_are_one_line_with_exit_code_2(pretrained, small_data, tmp_path, capsys):
    cases = ((["--run", str(tmp_path / "norun"), "--data", str(small_data)], "norun does not exist"),
             (["--run", str(pretrained), "--data", str(tmp_path / "nodata")], "nodata does not exist"),
             (["--run", str(small_data), "--data", str(small_data)], "holds no trained model"))
    for argv, needle in cases:
        rc = main(["small", *argv, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and needle in err and err.startswith("emotionlib small: error:")
    assert not (tmp_path / "out").exists()
