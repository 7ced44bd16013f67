"""The built-in synthetic dataset: determinism, layouts, label noise, and - on the pixels -
that each cue separates only its own two groups of classes while the three together name the class."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from emotionlib import synth
from emotionlib.errors import ConfigError


def _hashes(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(root):
    with open(root / "factors.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ the design


def test_class_factor_map_is_a_bijection_and_each_factor_splits_4_4():
    assert synth.CLASSES == ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")
    combos = {tuple(synth.CLASS_FACTORS[c][f] for f in synth.FACTORS) for c in synth.CLASSES}
    assert combos == set(itertools.product(*synth.FACTORS.values()))
    for f, levels in synth.FACTORS.items():
        assert len(set(levels)) == 2
        for level in levels:
            assert sum(synth.CLASS_FACTORS[c][f] == level for c in synth.CLASSES) == 4
    # The documented (arbitrary) map: bits of the class index, colour first.
    assert synth.CLASS_FACTORS["amusement"] == {"colour": "warm", "texture": "stripes", "shape": "round"}
    assert synth.CLASS_FACTORS["sadness"] == {"colour": "cool", "texture": "dots", "shape": "angular"}


def test_render_mask_and_nuisances():
    rng = synth.image_rng(0, 0, 0)
    img, mask, nuis = synth.render(synth.CLASS_FACTORS["anger"], 80, rng)
    assert img.size == (80, 80) and img.mode == "RGB"
    assert mask.shape == (80, 80) and mask.dtype == bool
    assert set(nuis) == set(synth.NUISANCES)
    assert nuis["shape_kind"] in ("star4", "star5", "star6")  # anger is angular
    # Equal-area sizing: the mask covers pi * scale^2 of the image, within anti-aliasing error.
    assert mask.mean() == pytest.approx(np.pi * nuis["obj_scale"] ** 2, rel=0.08)
    ys, xs = np.nonzero(mask)
    assert xs.mean() / 80 == pytest.approx(nuis["obj_x"], abs=0.03)
    assert ys.mean() / 80 == pytest.approx(nuis["obj_y"], abs=0.03)
    with pytest.raises(ConfigError, match="factors="):
        synth.render({"colour": "warm", "texture": "stripes", "shape": "oval"}, 80, rng)


def test_object_survives_every_corner_crop():
    # Sec. 4.1 crops the four corners and the centre; at crop = 0.75 each must keep most of the object.
    size, crop = 96, 72
    worst = 1.0
    for ci, c in enumerate(synth.CLASSES):
        for i in range(12):
            for shift in (0.0, 1.0):
                _, mask, _ = synth.render(synth.CLASS_FACTORS[c], size, synth.image_rng(5, ci, i), shift)
                for y0, x0 in [(0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop), (12, 12)]:
                    worst = min(worst, mask[y0 : y0 + crop, x0 : x0 + crop].sum() / mask.sum())
    assert worst > 0.85


# ------------------------------------------------------------------ determinism and files


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    kw = dict(per_class=3, size=64, label_noise=0.3, progress=False)
    a = _hashes(synth.generate(tmp_path / "a", seed=7, **kw))
    b = _hashes(synth.generate(tmp_path / "b", seed=7, **kw))
    c = _hashes(synth.generate(tmp_path / "c", seed=8, **kw))
    assert len(a) == 8 * 3 + 2 and a == b
    images_a = {v for k, v in a.items() if k.endswith(".jpg")}
    images_c = {v for k, v in c.items() if k.endswith(".jpg")}
    assert not images_a & images_c


def test_fi_layout_and_factors_csv(tmp_path):
    out = synth.generate(tmp_path / "fi", per_class=4, size=64, seed=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == sorted([*synth.CLASSES, "factors.csv", "synth_meta.json"])
    for c in synth.CLASSES:
        assert sorted(p.name for p in (out / c).iterdir()) == [f"{c}_{i:04d}.jpg" for i in range(4)]
    rows = _rows(out)
    assert list(rows[0]) == synth.CSV_COLUMNS
    assert sorted(r["path"] for r in rows) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    for r in rows:
        assert r["label"] == r["true_label"] == r["path"].split("/")[0]
        assert {f: r[f] for f in synth.FACTORS} == synth.CLASS_FACTORS[r["true_label"]]
    with Image.open(out / rows[0]["path"]) as im:
        assert im.size == (64, 64) and im.format == "JPEG" and not im.getexif()
    meta = json.loads((out / "synth_meta.json").read_text())
    assert meta["arguments"] == dict(per_class=4, size=64, seed=1, label_noise=0.0, layout="fi", shift=0.0)
    assert meta["classes"] == list(synth.CLASSES) and meta["class_factors"] == synth.CLASS_FACTORS
    assert set(meta["cues"]) == set(synth.FACTORS) and meta["n_images"] == 32 and meta["n_noisy_labels"] == 0


def test_generate_writes_what_render_draws(tmp_path):
    # The documented per-image seeding lets a notebook re-render any image, mask included.
    out = synth.generate(tmp_path / "d", per_class=2, size=64, seed=3, shift=0.5, progress=False)
    row = next(r for r in _rows(out) if r["path"] == "fear/fear_0001.jpg")
    img, _, nuis = synth.render(synth.CLASS_FACTORS["fear"], 64, synth.image_rng(3, 6, 1), shift=0.5)
    written = np.asarray(Image.open(out / row["path"]).convert("RGB"), dtype=float)
    assert np.abs(written - np.asarray(img, dtype=float)).mean() < 3.0  # JPEG q90 error only
    assert float(row["obj_scale"]) == nuis["obj_scale"] and row["shape_kind"] == nuis["shape_kind"]


def test_artphoto_layout(tmp_path):
    out = synth.generate(tmp_path / "art", per_class=3, size=64, layout="artphoto", progress=False)
    names = sorted(p.name for p in out.iterdir() if p.suffix == ".jpg")
    prefixes = [c if c != "sadness" else "sad" for c in synth.CLASSES]
    assert names == sorted(f"{p}_{n}.jpg" for p in prefixes for n in (1, 2, 3))
    assert not [p for p in out.iterdir() if p.is_dir()]
    rows = _rows(out)
    assert {r["path"] for r in rows} == set(names)
    assert {r["label"] for r in rows if r["path"].startswith("sad_")} == {"sadness"}


def test_label_noise(tmp_path):
    out = synth.generate(tmp_path / "n", per_class=40, size=32, seed=2, label_noise=0.3, progress=False)
    rows = _rows(out)
    flipped = sum(r["label"] != r["true_label"] for r in rows)
    # Binomial(320, 0.3): mean 96, sd 8.2; +-4 sd.
    assert 63 <= flipped <= 129
    assert {r["label"] for r in rows if r["label"] != r["true_label"]} == set(synth.CLASSES)  # any other class
    for r in rows:  # the folder is the written label; factors follow the true one
        assert r["path"].split("/")[0] == r["label"]
        assert {f: r[f] for f in synth.FACTORS} == synth.CLASS_FACTORS[r["true_label"]]
    assert json.loads((out / "synth_meta.json").read_text())["n_noisy_labels"] == flipped
    # Noise is drawn from its own stream: the images do not change, only where they are filed.
    clean = synth.generate(tmp_path / "c", per_class=40, size=32, seed=2, progress=False)
    clean_rows = _rows(clean)
    assert not any(r["label"] != r["true_label"] for r in clean_rows)
    hashes = lambda root, rs: sorted(hashlib.sha256((root / r["path"]).read_bytes()).hexdigest() for r in rs)
    assert hashes(out, rows) == hashes(clean, clean_rows)


def test_reuse_and_refusal(tmp_path):
    out = synth.generate(tmp_path / "r", per_class=1, size=32, progress=False)
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert synth.generate(out, per_class=1, size=32, progress=False) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp  # nothing rewritten
    with pytest.raises(ConfigError, match="not empty"):
        synth.generate(out, per_class=1, size=32, seed=1, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"other.*not empty.*no synth output"):
        synth.generate(other, per_class=1, size=32, progress=False)
    (out / "anger" / "anger_0000.jpg").unlink()
    with pytest.raises(ConfigError, match="missing 1 files"):
        synth.generate(out, per_class=1, size=32, progress=False)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(per_class=0), "per_class"),
        (dict(per_class=2.5), "per_class"),
        (dict(size=31), "size"),
        (dict(label_noise=1.0), "label_noise"),
        (dict(label_noise=-0.1), "label_noise"),
        (dict(layout="iaps"), "layout"),
        (dict(shift=1.5), "shift"),
        (dict(seed=-1), "seed"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(ConfigError, match=f"^{name}=") as e:
        synth.generate(tmp_path / "bad", progress=False, **kwargs)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ each cue on the pixels


def colour_feature(img):
    """Chroma-weighted hue histogram and mean chroma: low-level colour, blind to layout."""
    ycc = np.asarray(img.convert("YCbCr"), dtype=float)
    cb, cr = ycc[..., 1] - 128, ycc[..., 2] - 128
    hue = np.degrees(np.arctan2(cr, cb)) % 360
    hist, _ = np.histogram(hue, bins=12, range=(0, 360), weights=np.hypot(cb, cr))
    return np.r_[hist / hist.sum(), cb.mean(), cr.mean()]


def texture_feature(img):
    """How the grey spectrum of the four corner patches spreads over orientation and scale.

    Sorted angular energies are rotation-invariant: one peak for stripes, several for dots; the share of energy
    per frequency band tells fine (stripes, period 4-6 px at 128 px) from coarse (dots, 10-14 px apart).
    Corners mostly miss the object, so its edges do not leak the shape into this feature.
    """
    g = np.asarray(img.convert("L"), dtype=float)
    n, p = g.shape[0], int(0.3 * g.shape[0])
    window = np.outer(np.hanning(p), np.hanning(p))
    power = 0
    for y0, x0 in [(0, 0), (0, n - p), (n - p, 0), (n - p, n - p)]:
        q = g[y0 : y0 + p, x0 : x0 + p]
        power = power + np.abs(np.fft.fft2((q - q.mean()) * window)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(p), np.fft.fftfreq(p), indexing="ij")
    r, angle = np.hypot(fx, fy), np.degrees(np.arctan2(fy, fx)) % 180
    ring = (r > 1 / 20) & (r < 0.45)
    hist, _ = np.histogram(angle[ring], bins=8, range=(0, 180), weights=power[ring])
    bands, _ = np.histogram(r[ring], bins=[1 / 20, 1 / 8, 1 / 5, 0.3, 0.45], weights=power[ring])
    return np.r_[np.sort(hist)[::-1] / hist.sum(), bands / bands.sum()]


def shape_feature(mask):
    """Compactness 4 pi A / P^2 of the object mask (1 for a disc), P from the blurred mask's gradient."""
    gy, gx = np.gradient(gaussian_filter(mask.astype(float), 1.0))
    return np.array([4 * np.pi * mask.sum() / np.hypot(gx, gy).sum() ** 2])


@pytest.fixture(scope="module")
def probe_set():
    """40 images per class at 96 px, with the three features and the factor bits of each."""
    feats, labels = {"colour": [], "texture": [], "shape": []}, []
    for ci, c in enumerate(synth.CLASSES):
        for i in range(40):
            img, mask, _ = synth.render(synth.CLASS_FACTORS[c], 96, synth.image_rng(11, ci, i))
            # The model sees a centre crop of a resize (Sec. 4.1), so probe colour and texture there too.
            seen = img.resize((78, 78), Image.Resampling.BILINEAR).crop((3, 3, 75, 75))
            feats["colour"].append(colour_feature(seen))
            feats["texture"].append(texture_feature(seen))
            feats["shape"].append(shape_feature(mask))
            labels.append(ci)
    labels = np.array(labels)
    bits = {
        f: np.array([synth.FACTORS[f].index(synth.CLASS_FACTORS[synth.CLASSES[y]][f]) for y in labels])
        for f in synth.FACTORS
    }
    return {k: np.array(v) for k, v in feats.items()}, labels, bits


def _probe(x, y):
    """Held-out accuracy (4-fold) of a linear probe."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(solver="newton-cg", max_iter=500))
    return cross_val_score(clf, x, y, cv=4).mean()


@pytest.mark.parametrize("cue", list(synth.FACTORS))
def test_each_cue_separates_only_its_own_groups(probe_set, cue):
    feats, labels, bits = probe_set
    x = feats[cue]
    assert _probe(x, bits[cue]) > 0.9
    for other in synth.FACTORS:  # about chance (0.5) on the other cues' groups...
        if other != cue:
            assert _probe(x, bits[other]) < 0.65
    assert _probe(x, labels) < 0.4  # ...so about chance within its group: 0.25 for eight classes


def test_all_three_cues_are_needed_and_suffice(probe_set):
    # The same probe that fails on one cue names the class from all three: the single-cue
    # thresholds above fail for a design where one cue identified the class.
    feats, labels, _ = probe_set
    assert _probe(np.hstack(list(feats.values())), labels) > 0.85
    for pair in itertools.combinations(synth.FACTORS, 2):  # two levels leave a coin flip: about 0.5
        assert _probe(np.hstack([feats[f] for f in pair]), labels) < 0.62


def test_shift_moves_the_nuisances_not_the_cues():
    classes = [c for c in synth.CLASSES for _ in range(6)]
    draws = {
        s: [
            synth.render(synth.CLASS_FACTORS[c], 64, synth.image_rng(4, synth.CLASSES.index(c), i % 6), s)
            for i, c in enumerate(classes)
        ]
        for s in (0.0, 1.0)
    }
    mean = lambda s, k: np.mean([d[2][k] for d in draws[s]])
    assert mean(1.0, "n_clutter") > mean(0.0, "n_clutter") + 2
    assert mean(1.0, "obj_scale") < mean(0.0, "obj_scale") - 0.02
    warm = lambda s: [d[2]["bg_hue"] for d, c in zip(draws[s], classes) if synth.CLASS_FACTORS[c]["colour"] == "warm"]
    assert max(warm(0.0)) <= 150 and min(warm(1.0)) >= 125  # other hues, same warm palette
    # The cue still reads the same: a colour probe fitted at shift 0 transfers to shift 1.
    xs = {s: np.array([colour_feature(d[0]) for d in v]) for s, v in draws.items()}
    cool = np.array([synth.CLASS_FACTORS[c]["colour"] == "cool" for c in classes])
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(xs[0.0], cool)
    assert clf.score(xs[1.0], cool) > 0.9


def test_an_older_format_is_refused_by_generate_and_replaced_by_ensure(tmp_path, capsys):
    out = synth.generate(tmp_path / "old", per_class=1, size=32, progress=False)
    meta = json.loads((out / "synth_meta.json").read_text())
    meta["format_version"] = synth.FORMAT_VERSION - 1
    (out / "synth_meta.json").write_text(json.dumps(meta))
    (out / "stale.txt").write_text("from the old generator")
    with pytest.raises(ConfigError, match=f"format {synth.FORMAT_VERSION - 1} .*delete the folder"):
        synth.generate(out, per_class=1, size=32, progress=False)
    assert (out / "stale.txt").exists()  # generate never deletes
    synth.ensure(out, per_class=1, size=32, progress=False)  # the project's own folders are rewritten
    assert json.loads((out / "synth_meta.json").read_text())["format_version"] == synth.FORMAT_VERSION
    assert not (out / "stale.txt").exists() and "writing format" in capsys.readouterr().out
