"""Receptive-field patches (Fig. 3) and linear probes of the synthetic factors."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from emotionlib import probes
from emotionlib.ablation import Features, _relative_paths, extract_features
from emotionlib.config import get_config
from emotionlib.data import DatasetIndex, open_dataset
from emotionlib.errors import DataError
from emotionlib.model import UnifiedCNNRNN, receptive_field
from emotionlib.probes import choose_channels, linear_probe, patch_box
from emotionlib.synth import CLASS_FACTORS, generate


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", per_class=8, size=64, progress=False)


def tiny():
    return get_config("tiny", **{"train.device": "cpu"})


def part_of(data: Path, n: int = 12) -> DatasetIndex:
    index = open_dataset(data)
    return DatasetIndex(index.root, index.classes, index.samples[::len(index.samples) // n][:n], [])


# ----------------------------------------------------------------------------- receptive fields


def test_patch_boxes_on_the_tiny_geometry():
    """tiny: conv1 3x3/1, then 1x1, pool 3/2; stages 2-4 5x5 pad 2, 1x1, pool 3/2 (worked out by hand)."""
    m = tiny().model
    assert receptive_field(m, "pool1") == (5, 2, 2.5)
    assert receptive_field(m, "pool2") == (17, 4, 4.5)
    assert receptive_field(m, "pool3") == (41, 8, 8.5)
    assert patch_box(m, "pool1", 0, 0, 48, 48) == (0, 0, 5, 5)
    assert patch_box(m, "pool1", 2, 3, 48, 48) == (6, 4, 11, 9)  # rows 6.5 +- 2.5, cols 8.5 +- 2.5
    assert patch_box(m, "pool2", 0, 0, 48, 48) == (0, 0, 13, 13)  # [-4, 13) clipped at the top-left border
    assert patch_box(m, "pool2", 9, 9, 48, 48) == (32, 32, 48, 48)  # [32, 49) clipped at the bottom-right border
    assert patch_box(m, "pool3", 1, 2, 48, 48) == (4, 0, 45, 37)
    assert patch_box(m, "pool3", 1, 2, 30, 40) == (4, 0, 40, 30)  # a non-square input clips each axis on its own


def test_patch_box_holds_every_pixel_the_unit_depends_on():
    cfg = tiny()
    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model).eval()
    for layer, (r, c) in (("pool1", (5, 7)), ("pool2", (3, 6)), ("pool2", (0, 9))):
        x = torch.randn(1, 3, 48, 48, requires_grad=True)
        model.trunk(x, int(layer[-1]))[layer][0, :, r, c].sum().backward()
        rows, cols = np.nonzero(x.grad.abs().sum(1)[0].numpy())
        left, top, right, bottom = patch_box(cfg.model, layer, r, c, 48, 48)
        assert len(rows) > 0
        assert top <= rows.min() and rows.max() < bottom and left <= cols.min() and cols.max() < right, layer


# ----------------------------------------------------------------------------- top activations


def test_choose_channels_prefers_selective_and_skips_dead_channels():
    vals = np.zeros((50, 4))
    vals[:, 1] = 3.0 + 0.01 * np.arange(50)  # always on: high mean, not selective
    vals[:, 2] = 0.1
    vals[:6, 2] = 5.0  # fires for six images only
    vals[:, 3] = np.linspace(0, 1, 50)
    chosen = choose_channels(vals, n=3, top_k=6)
    assert [c for c, _ in chosen] == [2, 3, 1]  # channel 0 never fires: never chosen
    assert [c for c, _ in choose_channels(vals, n=2, rule="mean")] == [1, 2]


def test_top_patches_are_the_peak_units_of_the_centre_crops(data):
    cfg = tiny()
    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model).eval()
    part = part_of(data)
    tops = probes.top_patches(model, part, cfg, n_channels=2, top_k=4)
    assert [t.layer for t in tops] == ["pool1", "pool1", "pool2", "pool2", "pool3", "pool3"]
    for t in tops:
        assert len(t.images) == 4 and t.values == sorted(t.values, reverse=True)
        i, r, c = t.images[0], t.rows[0], t.cols[0]
        crop = torch.from_numpy(probes.centre_crop(part, i, cfg)).permute(2, 0, 1).float() / 255
        mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        with torch.no_grad():
            fmap = model.trunk(((crop - mean) / std)[None], 3)[t.layer][0, t.channel]
        assert fmap[r, c].item() == pytest.approx(t.values[0], abs=1e-4)
        assert fmap.max().item() == pytest.approx(t.values[0], abs=1e-4)


def test_patch_figure_shows_the_clipped_receptive_fields(data):
    import matplotlib.pyplot as plt

    cfg = tiny()
    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model).eval()
    part = part_of(data)
    tops = probes.top_patches(model, part, cfg, n_channels=1, top_k=3)
    fig = probes.plot_top_patches(tops, part, cfg)
    grid = np.array(fig.axes).reshape(len(tops), 3)
    for t, row in zip(tops, grid):
        for j, ax in enumerate(row):
            left, top, right, bottom = patch_box(cfg.model, t.layer, t.rows[j], t.cols[j], 48, 48)
            assert ax.images[0].get_array().shape == (bottom - top, right - left, 3)
    assert grid[0][0].get_ylabel().startswith(f"{tops[0].layer} ch {tops[0].channel}")
    plt.close(fig)


# ----------------------------------------------------------------------------- linear probes


def test_probe_reads_an_encoded_factor_and_not_noise():
    rng = np.random.default_rng(0)
    y_tr, y_te = rng.integers(2, size=300), rng.integers(2, size=400)
    enc = lambda y: np.c_[5.0 * y + rng.normal(size=len(y)), rng.normal(size=(len(y), 15))]  # noqa: E731
    assert linear_probe(enc(y_tr), y_tr, enc(y_te), y_te) > 0.9
    noise = lambda y: rng.normal(size=(len(y), 16))  # noqa: E731
    assert 0.4 < linear_probe(noise(y_tr), y_tr, noise(y_te), y_te) < 0.6
    assert np.isnan(linear_probe(noise(y_tr), np.zeros(300), noise(y_te), y_te))  # one level: nothing to fit


def test_probe_table_is_branches_by_factors():
    rng = np.random.default_rng(1)
    n_tr, n_te = 240, 160
    paths = [f"x/{i}.jpg" for i in range(n_tr + n_te)]
    levels = {f: rng.integers(2, size=n_tr + n_te) for f in probes.FACTORS}
    factors = pd.DataFrame({"path": paths, **{f: np.where(levels[f], *reversed(("a", "b"))) for f in levels}})
    factors = factors.set_index("path")
    keys = ["branch1", "branch2", "branch3", "branch4", "main"]
    v = rng.normal(size=(n_tr + n_te, 1, 5, 8)).astype(np.float32)
    v[:, 0, 0, 0] += 3 * levels["colour"]  # FC_1 encodes colour
    v[:, 0, 4, 0] += 3 * levels["shape"]  # FC_5 encodes shape
    feats = lambda sl: Features(torch.from_numpy(v[sl]), torch.zeros(1), torch.zeros(1), keys, ["a"],  # noqa: E731
                                paths[sl], "center")
    df = probes.probe_branches(feats(slice(0, n_tr)), feats(slice(n_tr, None)), factors)
    assert list(df.index) == ["FC_1 (pool1)", "FC_2 (pool2)", "FC_3 (pool3)", "FC_4 (pool4)", "FC_5 (main)"]
    assert list(df.columns) == ["colour", "texture", "shape"]
    assert df.loc["FC_1 (pool1)", "colour"] > 0.9 and df.loc["FC_5 (main)", "shape"] > 0.9
    assert df.loc["FC_1 (pool1)", "shape"] < 0.7 and df.loc["FC_3 (pool3)", "texture"] < 0.7


def test_factors_match_the_images_by_path(data):
    factors = probes.read_factors(data)
    assert list(factors.columns[:4]) == ["label", "true_label", "colour", "texture"]
    part = part_of(data)
    rows = probes.match_factors(factors, _relative_paths(part))
    for s, (_, r) in zip(part.samples, rows.iterrows()):
        assert r["colour"] == CLASS_FACTORS[s.label]["colour"] and r["shape"] == CLASS_FACTORS[s.label]["shape"]
    assert probes.majority_rate(factors, list(factors.index))["texture"] == 0.5  # 4 classes of 8 per level
    with pytest.raises(DataError, match="no row for 1 image.*nope.jpg"):
        probes.match_factors(factors, ["nope.jpg"])


def test_probe_is_skipped_on_data_without_factors(tmp_path):
    assert probes.read_factors(tmp_path) is None


def test_probe_on_real_branch_features(data):
    """End to end on generated images: centre-crop features of an untrained CNN still carry the colour cue
    (a linear read-out of random conv features separates warm from cool palettes)."""
    cfg = tiny()
    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model).eval()
    index = open_dataset(data)
    tr = DatasetIndex(index.root, index.classes, index.samples[0::2], [])
    te = DatasetIndex(index.root, index.classes, index.samples[1::2], [])
    f_tr, f_te = (extract_features(model, p, cfg, "center") for p in (tr, te))
    df = probes.probe_branches(f_tr, f_te, probes.read_factors(data))
    assert df.shape == (5, 3) and df.notna().all().all()
    assert df.loc["FC_1 (pool1)", "colour"] > 0.8
