"""Receptive-field patches (Fig. 3) and linear probes of the synthetic factors."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from emotionlib import probes
from emotionlib.ablation import Features, extract_features
from emotionlib.utils import relative_path
from emotionlib.config import get_config
from emotionlib.data import DatasetIndex, open_dataset
from emotionlib.errors import ConfigError, DataError
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
    return DatasetIndex(index.root, index.classes, index.samples[:: len(index.samples) // n][:n], [])


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
    feats = lambda sl: Features(
        torch.from_numpy(v[sl]),
        torch.zeros(1),
        torch.zeros(1),
        keys,
        ["a"],  # noqa: E731
        paths[sl],
        "center",
    )
    df = probes.probe_branches(feats(slice(0, n_tr)), feats(slice(n_tr, None)), factors)
    assert list(df.index) == ["FC_1 (pool1)", "FC_2 (pool2)", "FC_3 (pool3)", "FC_4 (pool4)", "FC_5 (main)"]
    assert list(df.columns) == ["colour", "texture", "shape"]
    assert df.loc["FC_1 (pool1)", "colour"] > 0.9 and df.loc["FC_5 (main)", "shape"] > 0.9
    assert df.loc["FC_1 (pool1)", "shape"] < 0.7 and df.loc["FC_3 (pool3)", "texture"] < 0.7


def test_factors_match_the_images_by_path(data):
    factors = probes.read_factors(data)
    assert list(factors.columns[:4]) == ["label", "true_label", "colour", "texture"]
    part = part_of(data)
    rows = probes.match_factors(factors, [relative_path(s.path, part.root) for s in part.samples])
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


# ----------------------------------------------------------------------------- controls


@pytest.fixture(scope="module")
def branch1_run(data, tmp_path_factory) -> Path:
    """One tiny epoch of the first stage: trunk stage 1 and branch 1 trained, every other module as drawn."""
    from emotionlib.train import fit

    out = tmp_path_factory.mktemp("run") / "run"
    fit(tiny(), data, out, until="branch1", progress=False)
    return out / "checkpoints" / "stage-branch1.pt"


def halves(data: Path) -> dict[str, DatasetIndex]:
    index = open_dataset(data)
    return {
        split: DatasetIndex(index.root, index.classes, index.samples[k::2], [])
        for k, split in enumerate(("train", "test"))
    }


def test_control_cnn_is_the_initial_draw_of_fit(branch1_run):
    from emotionlib.checkpoint import load_checkpoint
    from emotionlib.utils import derive_seed

    cfg = tiny()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    control = probes.control_cnn(cfg)
    assert torch.equal(torch.rand(3), expected)  # the caller's random stream is left alone
    torch.manual_seed(derive_seed(cfg.train.seed, "init"))
    drawn = UnifiedCNNRNN(cfg.model).state_dict()
    state = control.state_dict()
    assert not control.training and state.keys() == drawn.keys()
    assert all(torch.equal(state[k], drawn[k]) for k in drawn)
    bn = [k for k in state if k.endswith("running_var")]
    assert bn and all(torch.equal(state[k], torch.ones_like(state[k])) for k in bn)  # initial statistics
    trained = load_checkpoint(branch1_run)["model"]
    stage1 = ("trunk.stages.0.", "branches.branch1.")
    changed = [k for k in state if k.startswith(stage1) and not torch.equal(state[k], trained[k])]
    assert changed  # what the epoch trained differs from the control ...
    untouched = [k for k in state if not k.startswith(stage1)]
    assert all(torch.equal(state[k], trained[k]) for k in untouched)  # ... and the rest is fit's own draw
    other = probes.control_cnn(get_config("tiny", **{"train.seed": 1})).state_dict()
    assert not torch.equal(other["trunk.stages.0.convs.0.weight"], state["trunk.stages.0.convs.0.weight"])


def test_pixel_features_read_the_centre_crop(tmp_path):
    """tiny: resize 52, crop 48, so a 52 x 52 image loses a 2-px frame; a warm frame around a cool centre reads
    as cool."""
    from PIL import Image

    warm, cool = (230, 120, 30), (40, 110, 220)
    framed = np.full((52, 52, 3), warm, np.uint8)
    framed[2:50, 2:50] = cool
    for name, a in (
        ("warm", np.full((52, 52, 3), warm, np.uint8)),
        ("cool", np.full((52, 52, 3), cool, np.uint8)),
        ("framed", framed),
    ):
        (tmp_path / name).mkdir()
        Image.fromarray(a).save(tmp_path / name / f"{name}.png")
    part = open_dataset(tmp_path)
    names = [s.label for s in part.samples]
    hist = probes.pixel_features(part, tiny())
    assert hist.shape == (3, 64) and np.allclose(hist.sum(1), 1)
    w, c, f = (hist[names.index(n)] for n in ("warm", "cool", "framed"))
    assert not np.array_equal(w, c) and np.array_equal(f, c)
    assert w.reshape(8, 8).sum(0)[4:].sum() == 1 and c.reshape(8, 8).sum(0)[4:].sum() == 0  # warm: Cr above 128
    thumb = probes.pixel_features(part, tiny(), "grey thumbnail", size=4)
    assert thumb.shape == (3, 16) and ((thumb >= 0) & (thumb <= 1)).all()
    with pytest.raises(ConfigError, match="kind='rgb'"):
        probes.pixel_features(part, tiny(), "rgb")


def test_controlled_table_has_every_source_for_every_level_and_cue(data, branch1_run, tmp_path):
    from emotionlib.ablation import cnn_digest, load_cnn

    table = probes.controlled_probes([branch1_run], halves(data), probes.read_factors(data), cache=tmp_path)
    assert list(table.columns) == ["source", "level", "cue", "seed", "accuracy"]
    levels = ["FC_1 (pool1)", "FC_2 (pool2)", "FC_3 (pool3)", "FC_4 (pool4)", "FC_5 (main)"]
    for source in probes.SOURCES:
        rows = table[table.source == source]
        assert sorted(zip(rows.level, rows.cue)) == sorted((lv, c) for lv in levels for c in probes.FACTORS)
        assert (rows.seed == 0).all()
    for source in ("pixels: colour histogram", "pixels: grey thumbnail", "majority"):
        rows = table[table.source == source]
        assert list(rows.cue) == list(probes.FACTORS) and (rows.level == "-").all() and rows.seed.isna().all()
    assert table.accuracy.between(0, 1).all()
    assert (table[table.source == "majority"].accuracy == 0.5).all()
    assert table[table.source == "pixels: colour histogram"].set_index("cue").accuracy["colour"] > 0.9
    model, cfg = load_cnn(branch1_run)  # each source's features came from the CNN it is named for
    for source, net in (("trained", model), ("random-init", probes.control_cnn(cfg))):
        assert torch.load(tmp_path / "seed-0" / f"{source}-test.pt", weights_only=True)["key"]["cnn"] == cnn_digest(net)
    with pytest.raises(ConfigError, match="a second checkpoint of seed 0"):
        probes.controlled_probes([branch1_run, branch1_run], halves(data), probes.read_factors(data), cache=tmp_path)


def hand_table(gains: dict[int, float]) -> pd.DataFrame:
    """Two levels x two cues; the control reads 0.6 + 0.1 * seed everywhere, training adds `gains[seed]` to FC_1's
    colour and nothing elsewhere. Plus a pixel and a majority row per cue."""
    rows = []
    for seed, g in gains.items():
        for level in ("FC_1 (pool1)", "FC_5 (main)"):
            for cue in ("colour", "shape"):
                control = 0.6 + 0.1 * seed
                gain = g if (level, cue) == ("FC_1 (pool1)", "colour") else 0.0
                rows += [("trained", level, cue, seed, control + gain), ("random init", level, cue, seed, control)]
    rows += [
        (src, "-", cue, pd.NA, 0.5) for src in ("pixels: colour histogram", "majority") for cue in ("colour", "shape")
    ]
    return pd.DataFrame(rows, columns=["source", "level", "cue", "seed", "accuracy"]).astype({"seed": "Int64"})


def test_gain_is_trained_minus_the_control_of_the_same_seed():
    gain = probes.probe_gain(hand_table({0: 0.1, 1: 0.2, 2: 0.3})).set_index(["level", "cue"])
    assert list(gain.index) == [
        ("FC_1 (pool1)", "colour"),
        ("FC_1 (pool1)", "shape"),
        ("FC_5 (main)", "colour"),
        ("FC_5 (main)", "shape"),
    ]
    assert gain.loc[("FC_1 (pool1)", "colour"), "gain"] == pytest.approx(0.2)
    assert gain.loc[("FC_1 (pool1)", "colour"), "random init"] == pytest.approx(0.7)  # mean of 0.6, 0.7, 0.8
    assert gain.loc[("FC_1 (pool1)", "colour"), "trained"] == pytest.approx(0.9)  # 0.7, 0.9, 1.1
    assert (gain.drop(("FC_1 (pool1)", "colour"))["gain"].abs() < 1e-12).all()
    assert (gain.seeds == 3).all()
    broken = hand_table({0: 0.1})
    with pytest.raises(DataError, match="no random-init control"):
        probes.probe_gain(broken[~((broken.source == "random init") & (broken.cue == "shape"))])


def test_gain_interval_is_a_t_interval_over_seeds_and_nan_for_one():
    half = 4.302652729911275 * 0.1 / np.sqrt(3)  # t_{0.975, 2}; sample sd 0.1 (experiment.mean_interval)
    g3 = probes.probe_gain(hand_table({0: 0.1, 1: 0.2, 2: 0.3})).iloc[0]
    assert (g3.gain_low, g3.gain_high) == pytest.approx((0.2 - half, 0.2 + half))
    g1 = probes.probe_gain(hand_table({0: 0.1})).iloc[0]
    assert g1.gain == pytest.approx(0.1) and g1.seeds == 1 and np.isnan(g1.gain_low) and np.isnan(g1.gain_high)


def test_pivot_puts_trained_beside_control_beside_the_baselines():
    wide = probes.pivot_probes(hand_table({0: 0.1, 1: 0.3}))
    assert list(wide.index) == ["FC_1 (pool1)", "FC_5 (main)"]
    assert list(wide.columns.get_level_values(1)[:4]) == [
        "trained",
        "random init",
        "pixels: colour histogram",
        "majority",
    ]
    assert wide.loc["FC_1 (pool1)", ("colour", "trained")] == pytest.approx(0.85)  # (0.7 + 1.0) / 2
    assert (wide[("shape", "majority")] == 0.5).all() and wide.notna().all().all()


def test_controlled_plot_has_a_panel_per_cue_with_bars_and_baselines():
    import matplotlib.pyplot as plt

    fig = probes.plot_controlled_probes(hand_table({0: 0.1, 1: 0.3}))
    assert [ax.get_title() for ax in fig.axes] == ["colour", "shape"]
    for ax in fig.axes:
        assert ax.get_ylim() == (0.4, 1.0)
        assert len(ax.patches) == 2 * 2  # trained and random init for each level
        assert len(ax.lines) == 2  # the pixel baseline and the majority rate
    assert fig.axes[0].get_xticklabels()[0].get_text().endswith("+0.20")  # FC_1 colour: mean gain
    plt.close(fig)
