"""Baselines of Table 1: hand-crafted features (exact values on toy images), one against all vs scikit-learn,
ImageNet weight files (loading, wrong shapes, pickled code), and each baseline end to end on tiny data."""

import colorsys
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emotionlib import baselines as B
from emotionlib.cli import main
from emotionlib.config import get_config
from emotionlib.errors import CheckpointError, ConfigError
from emotionlib.synth import CLASSES, generate


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    # 3 per class: the 80/15/5 split keeps 2 for training and 1 for testing, so 16 train images = one batch
    return generate(tmp_path_factory.mktemp("data") / "synth", per_class=3, size=64, seed=3, progress=False)


def tiny_cfg(**over):
    return get_config("tiny", **{"train.deterministic": True, "train.batch_size": 16, **over})


@pytest.fixture(scope="module")
def resnet():
    """One ResNet-101 for the loading tests (building one takes seconds); a failed load leaves it unchanged."""
    torch.manual_seed(0)
    return B.build_network("resnet101")


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory, resnet) -> Path:
    """An 'ImageNet' ResNet-101 state dict as torchvision saves it (1000-way fc), with a recognisable conv1."""
    state = {k: v.clone() for k, v in resnet.state_dict().items()}
    state["conv1.weight"] = torch.full_like(state["conv1.weight"], 0.0123)
    path = tmp_path_factory.mktemp("weights") / "resnet101-63fe2227.pth"
    torch.save(state, path)
    return path


# ----------------------------------------------------------------------------- hand-crafted features


def test_rgb_to_hsv_matches_colorsys():
    rgb = np.random.default_rng(0).random((6, 7, 3))
    rgb[0, 0] = 0.5  # grey: hue 0, saturation 0
    h, s, v = B.rgb_to_hsv(rgb)
    ref = np.array([colorsys.rgb_to_hsv(*px) for px in rgb.reshape(-1, 3)])
    np.testing.assert_allclose(np.stack([h.ravel(), s.ravel(), v.ravel()], 1), ref, atol=1e-12)


def test_glcm_of_a_toy_image_by_hand():
    q = np.array([[0, 0, 1], [1, 2, 2]])
    # horizontal pairs (0,0) (0,1) (1,2) (2,2), counted both ways: 8 entries
    p = B.glcm(q, 3, 0, 1)
    np.testing.assert_allclose(p * 8, [[2, 1, 0], [1, 0, 1], [0, 1, 2]])
    st = B.glcm_stats(p)
    assert st["contrast"] == pytest.approx(4 / 8)
    assert st["energy"] == pytest.approx(12 / 64)
    assert st["homogeneity"] == pytest.approx(4 / 8 + 4 * 0.5 / 8)
    # vertical pairs (0,1) (0,2) (1,2): contrast (1 + 4 + 1) * 2 / 6
    assert B.glcm_stats(B.glcm(q, 3, 1, 0))["contrast"] == pytest.approx(2.0)


def test_features_of_a_solid_orange_image():
    img = np.zeros((32, 32, 3))
    img[...] = (1.0, 0.25, 0.0)  # hue 15 degrees, saturation 1, value 1
    f = B.handcrafted_feature_dict(img)
    assert tuple(f) == B.FEATURE_NAMES and len(B.FEATURE_NAMES) == 46
    assert f["saturation_mean"] == 1 and f["brightness_mean"] == 1 and f["saturation_std"] == 0
    assert f["hue_cos"] == pytest.approx(math.cos(math.radians(15)))
    assert f["hue_concentration"] == pytest.approx(1)
    assert f["hue_sector_00"] == pytest.approx(1) and f["hue_sector_01"] == 0
    assert f["warm_share"] == pytest.approx(1) and f["cool_share"] == 0
    assert f["colourfulness"] == pytest.approx(0.3 * math.hypot(0.75, 0.625))
    assert f["itten_light_dark"] == 0 and f["itten_hue"] == pytest.approx(0)
    assert f["glcm_contrast"] == 0 and f["glcm_energy"] == 1 and f["glcm_homogeneity"] == 1
    assert f["edge_density"] == 0 and f["directionality"] == 0 and f["wavelet_luma_1"] == 0
    assert f["symmetry_left_right"] == 1 and f["symmetry_top_bottom"] == 1


def test_features_of_a_black_white_edge():
    img = np.zeros((8, 8, 3))
    img[:, 4:] = 1.0
    f = B.handcrafted_feature_dict(img)
    assert f["edge_density"] == pytest.approx(2 / 8)  # Sobel/8 = 0.5 in the two columns beside the edge
    assert f["symmetry_left_right"] == pytest.approx(0, abs=1e-12) and f["symmetry_top_bottom"] == 1
    assert f["directionality"] == pytest.approx(1)  # every gradient points along x
    assert f["brightness_std"] == pytest.approx(0.5) and f["saturation_mean"] == 0


# ----------------------------------------------------------------------------- one against all


@pytest.mark.parametrize("binary", [B.binary_svm, B.binary_logistic])
def test_one_against_all_equals_sklearn_one_vs_rest(binary):
    from sklearn.multiclass import OneVsRestClassifier

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [2, 0, 1], [0, 2, -1], [2, 2, 2]])
    y = np.repeat(np.arange(4), [30, 10, 20, 15])
    x = centres[y] + rng.normal(0, 1.0, (len(y), 3))
    ours = B.OneAgainstAll(binary(seed=0)).fit(x, y)
    ref = OneVsRestClassifier(binary(seed=0)).fit(x, y)
    np.testing.assert_allclose(ours.decision_function(x), ref.decision_function(x), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(x), ref.predict(x))
    assert (ours.predict(x) == y).mean() > 0.6  # a real classifier, not a constant
    # one binary classifier per class, each fitted on that class against the rest
    assert len(ours.estimators_) == 4 and all(list(e.classes_) == [0, 1] for e in ours.estimators_)


def test_svm_scores_put_absent_classes_last():
    x = np.array([[0.0], [0.1], [5.0], [5.1]])
    clf = B.linear_svm().fit(x, np.array([0, 0, 2, 2]))  # class 1 has no training image
    p = B.svm_scores(clf, x, 3)
    assert p.shape == (4, 3) and np.allclose(p.sum(1), 1) and (p[:, 1] == 0).all()
    assert list(p.argmax(1)) == [0, 0, 2, 2]


# ----------------------------------------------------------------------------- weight files


def test_a_written_state_dict_loads_into_all_but_the_last_layer(resnet_weights, resnet):
    net = resnet
    with torch.no_grad():
        net.fc.weight.normal_()
    fc_before = net.fc.weight.clone()
    B.load_weights(net, resnet_weights, "resnet101")
    assert torch.equal(net.conv1.weight, torch.full_like(net.conv1.weight, 0.0123))
    src = torch.load(resnet_weights, weights_only=True)
    assert torch.equal(net.layer4[2].conv3.weight, src["layer4.2.conv3.weight"])
    assert torch.equal(net.fc.weight, fc_before)  # ImageNet's 1000-way layer is replaced, never loaded


def test_wrong_shaped_or_partial_weights_give_one_line_naming_the_file(tmp_path, resnet):
    net = resnet
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["layer1.0.conv1.weight"] = torch.zeros(8, 64, 1, 1)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError) as e:
        B.load_weights(net, tmp_path / "wrong.pth", "resnet101")
    msg = str(e.value)
    assert "\n" not in msg and "wrong.pth" in msg and "layer1.0.conv1.weight" in msg and "(8, 64, 1, 1)" in msg
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"partial.pth does not fit resnet101: it lacks layer1.0.conv1.weight"):
        B.load_weights(net, tmp_path / "partial.pth", "resnet101")
    (tmp_path / "garbage.pth").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="garbage.pth cannot be read"):
        B.load_weights(net, tmp_path / "garbage.pth", "resnet101")


def test_a_pickled_payload_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"conv1.weight": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth"):
        B.load_weights(B.build_network("alexnet"), tmp_path / "evil.pth", "alexnet")
    assert not marker.exists()


def test_weights_come_from_torchvisions_cache_or_say_random_init(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, prov = B.resolve_weights("alexnet", None)
    assert path is None and prov["pretrained"] is False and prov["weights"] == "random-init"
    assert "random initialisation" in prov["weights_note"]
    cached = tmp_path / "torch/hub/checkpoints/alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert B.resolve_weights("alexnet", None)[0] == cached
    assert B.resolve_weights("alexnet", "none")[0] is None  # "none" forces random init even with a cache
    with pytest.raises(CheckpointError, match="missing.pth does not exist"):
        B.resolve_weights("resnet101", tmp_path / "missing.pth")


# ----------------------------------------------------------------------------- end to end


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_handcrafted_svm_end_to_end(tiny_data, tmp_path):
    m = B.run_baseline("handcrafted-svm", tiny_cfg(), tiny_data, tmp_path / "hc", progress=False)
    assert (m["variant"], m["profile"], m["n_train"], m["n_test"], m["n_val"]) == ("handcrafted-svm", "tiny", 16, 8, 0)
    assert m["classes"] == list(CLASSES)
    preds = _rows(tmp_path / "hc/predictions.csv")
    assert len(preds) == 8 and m["test_accuracy"] == pytest.approx(np.mean([int(r["correct"]) for r in preds]))
    tpr = [m["confusion"][i][i] for i in range(8)]
    assert list(m["per_class_tpr"].values()) == pytest.approx(tpr) and m["mean_tpr"] == pytest.approx(np.mean(tpr))
    assert m["paper_table1"]["row"] == "Zhao" and m["paper_table1"]["fi_accuracy_percent"] == 46.52
    saved = json.loads((tmp_path / "hc/config.json").read_text())
    assert saved["baseline"] == "handcrafted-svm" and saved["settings"]["features"] == list(B.FEATURE_NAMES)
    for name in ("run.json", "split.csv", "skipped.csv", "metrics.json"):
        assert (tmp_path / "hc" / name).exists()
    # deterministic; another run can reuse the split (the same test images); resume returns the finished metrics
    again = B.run_baseline(
        "handcrafted-svm", tiny_cfg(), tiny_data, tmp_path / "hc2", split_csv=tmp_path / "hc/split.csv", progress=False
    )
    assert again["confusion"] == m["confusion"]
    assert (tmp_path / "hc2/split.csv").read_text() == (tmp_path / "hc/split.csv").read_text()
    done = B.run_baseline("handcrafted-svm", tiny_cfg(), None, tmp_path / "hc", resume=True)
    assert (done["confusion"], done["test_accuracy"]) == (m["confusion"], m["test_accuracy"])


@pytest.mark.slow
def test_alexnet_svm_from_random_init_end_to_end(tiny_data, tmp_path):
    m = B.run_baseline("alexnet-svm", tiny_cfg(), tiny_data, tmp_path / "ax", weights="none", progress=False)
    assert m["pretrained"] is False and m["weights"] == "random-init"
    assert "started from random initialisation" in m["weights_note"]
    assert m["settings"]["input_size"] == 64 and m["settings"]["epochs"] == 1  # tiny crops (48) upsampled
    summary = _rows(tmp_path / "ax/summary.csv")
    assert [(r["stage"], r["epoch"]) for r in summary] == [("alexnet-svm", "1")]
    assert len(_rows(tmp_path / "ax/predictions.csv")) == m["n_test"] == 8
    assert 0 <= m["test_accuracy"] <= 1 and json.loads((tmp_path / "ax/run.json").read_text())["pretrained"] is False


@pytest.mark.slow
def test_resnet101_fine_tuned_from_a_weights_file_end_to_end(tiny_data, tmp_path, resnet_weights):
    m = B.run_baseline("resnet101", tiny_cfg(), tiny_data, tmp_path / "rn", weights=resnet_weights, progress=False)
    assert m["pretrained"] is True and m["weights"] == str(resnet_weights)
    assert m["paper_table1"] == {
        "row": "ResNet-101",
        "fi_accuracy_percent": 60.82,
        "note": "the paper's number on FI, for reference; not measured by this run",
    }
    assert [r["stage"] for r in _rows(tmp_path / "rn/summary.csv")] == ["resnet101"]
    p = np.array([[float(r[f"p_{c}"]) for c in m["classes"]] for r in _rows(tmp_path / "rn/predictions.csv")])
    assert p.shape == (8, 8) and np.allclose(p.sum(1), 1, atol=1e-5)


def test_a_wrong_weights_file_fails_before_anything_is_written(tiny_data, tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="tiny.pth does not fit alexnet"):
        B.run_baseline("alexnet-svm", tiny_cfg(), tiny_data, tmp_path / "out", weights=tmp_path / "tiny.pth")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="unknown baseline 'svm'"):
        B.run_baseline("svm", tiny_cfg(), tiny_data, tmp_path / "out")
    with pytest.raises(ConfigError, match="--weights applies to alexnet-svm and resnet101"):
        B.run_baseline("handcrafted-svm", tiny_cfg(), tiny_data, tmp_path / "out", weights=tmp_path / "tiny.pth")


def test_cli_trains_a_baseline_and_errors_are_one_line(tiny_data, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--variant",
            "handcrafted-svm",
            "--profile",
            "tiny",
            "--batch-size",
            "16",
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and out["variant"] == "handcrafted-svm" and out["profile"] == "tiny"
    for argv, needle in (
        (["--variant", "resnet101", "--weights", str(tmp_path / "nope.pth")], "nope.pth does not exist"),
        (["--variant", "bigru", "--weights", "x.pth"], "--weights applies to the baselines"),
        (["--variant", "alexnet-svm", "--init-from", str(tmp_path)], "--init-from"),
    ):
        rc = main(["train", "--profile", "tiny", "--data", str(tiny_data), "--out", str(tmp_path / "r2"), *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r2").exists()
    main(["variants"])
    listing = capsys.readouterr().out
    assert all(name in listing for name in B.BASELINES) and "57.89%" in listing


def test_feature_taps_are_the_inputs_of_the_last_layer(resnet):
    """fc7 and pool5 are what the replaced last layer reads: last_layer(features) is the network's output."""
    x = torch.randn(2, 3, 64, 64)
    alexnet = B.build_network("alexnet").eval()
    with torch.no_grad():
        torch.testing.assert_close(alexnet.classifier[6](B.alexnet_fc7(alexnet, x)), alexnet(x))
        resnet.eval()
        torch.testing.assert_close(resnet.fc(B.resnet_pool5(resnet, x)), resnet(x))
    assert B.alexnet_fc7(alexnet, x).shape == (2, 4096) and B.resnet_pool5(resnet, x).shape == (2, 2048)
