"""The data layer: loaders, bad input, splits (Sec. 4.3), five crops (Sec. 4.1) and pairs (Eq. 3-5)."""

from __future__ import annotations

import csv
import io
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from conftest import write_image
from emotionlib.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIKELS_EMOTIONS,
    DatasetIndex,
    EmotionDataset,
    PairBatchSampler,
    Sample,
    five_crop_boxes,
    load_image,
    make_split,
    open_dataset,
    read_split,
    scan_artphoto,
    scan_folder,
    scan_iaps,
    scan_manifest,
    summarise,
    write_loader_demo,
    write_split,
)
from emotionlib.errors import ConfigError, DataError


def pixels(im: Image.Image) -> list[list[int]]:
    return np.asarray(im).reshape(-1, 3).tolist()


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


# --------------------------------------------------------------------------- FI


def test_fi_folders(fi_folder):
    (fi_folder / "README.txt").write_text("not data")  # metadata beside the folders: ignored
    (fi_folder / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored
    write_image(fi_folder / "stray.jpg")  # an image outside the class folders
    index = scan_folder(fi_folder)
    assert index.classes == ["amusement", "fear", "sadness"]  # Fig. 6 order, not alphabetical/on-disk
    assert index.counts() == {"amusement": 4, "fear": 3, "sadness": 5}
    assert index.targets == [0] * 4 + [1] * 3 + [2] * 5
    assert index.class_to_idx == {"amusement": 0, "fear": 1, "sadness": 2}
    s = index.samples[4]
    assert (s.path.name, s.label, s.width, s.height, s.split) == ("fear_0000.jpg", "fear", 20, 16, None)
    assert index.skipped == [(fi_folder / "stray.jpg", "image outside the class folders")]


def test_fi_flat_and_class_order(tmp_path):
    root = tmp_path / "flat"
    for name in (
        "sadness_1.jpg",
        "Zebra_1.png",
        "amusement_0001.jpg",
        "awe_7.jpg",
        "disgust_3.png",
        "anger_2.jpg",
        "boredom_9.jpg",
    ):
        write_image(root / name)
    (root / "notes_1.psd").write_text("x")  # must not create a class "notes"
    (root / "factors.csv").write_text("path,label\n")  # metadata beside the images: ignored, not skipped
    write_image(root / "cover.jpg")  # no <emotion>_<id>
    index = scan_folder(root)
    # Mikels emotions in Fig. 6 order, then other names alphabetically
    assert index.classes == ["amusement", "anger", "awe", "disgust", "sadness", "boredom", "zebra"]
    assert [s.path.name for s in index.samples if s.label == "zebra"] == ["Zebra_1.png"]
    reasons = {p.name: r for p, r in index.skipped}
    assert set(reasons) == {"notes_1.psd", "cover.jpg"}
    assert reasons["notes_1.psd"].startswith("unsupported extension '.psd'")
    assert "<emotion>_<id>" in reasons["cover.jpg"]


def test_mikels_order_constant():
    assert MIKELS_EMOTIONS == ("amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness")


def test_open_dataset_dispatch(fi_folder, tmp_path):
    assert open_dataset(fi_folder).counts() == {"amusement": 4, "fear": 3, "sadness": 5}
    m = tmp_path / "m.csv"
    m.write_text("path,label\nFI/fear/fear_0000.jpg,fear\nFI/amusement/amusement_0000.jpg,amusement\n")
    assert open_dataset(m).counts() == {"amusement": 1, "fear": 1}
    with pytest.raises(DataError, match="nowhere"):
        open_dataset(tmp_path / "nowhere")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="x.json"):
        open_dataset(tmp_path / "x.json")


# --------------------------------------------------------------------------- manifest


def test_manifest_relative_absolute_and_split(tmp_path):
    a = write_image(tmp_path / "imgs" / "a.png", size=(9, 5))
    b = write_image(tmp_path / "elsewhere" / "b.png", size=(4, 6))
    m = tmp_path / "imgs" / "manifest.csv"
    m.write_text(f"Path,Label,Split\na.png,Awe,train\n{b},fear,test\n")
    index = scan_manifest(m)
    assert index.root == m.parent
    assert index.classes == ["awe", "fear"]
    assert [(s.path, s.label, s.width, s.height, s.split) for s in index.samples] == [
        (a, "awe", 9, 5, "train"),
        (b, "fear", 4, 6, "test"),
    ]
    assert scan_manifest(m, classes=["fear", "awe", "joy"]).targets == [1, 0]  # the given order


@pytest.mark.parametrize(
    "body, message",
    [
        ("a.png,awe\nmissing.png,fear\n", "missing.png: listed in"),
        ("a.png,awe\nb.png,fera\n", "unknown label 'fera'"),
        ("a.png,awe\nb.png,\n", "line 3 .*empty label"),
        ("a.png,awe\n\nb.png,\n", "line 4 .*empty label"),  # line numbers as an editor counts them
        ("a.png,awe\na.png,fear\n", "line 3 repeats a.png"),
        ("a.png,awe,tarin\nb.png,fear,test\n", "unknown split 'tarin'"),
    ],
)
def test_manifest_errors(tmp_path, body, message):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png")
    m = tmp_path / "m.csv"
    m.write_text("path,label" + (",split" if "test" in body else "") + "\n" + body)
    with pytest.raises(DataError, match=message):
        scan_manifest(m, classes=["awe", "fear"])


def test_manifest_missing_column(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,label\na.png,awe\n")
    with pytest.raises(DataError, match="missing column.*path"):
        scan_manifest(m)


# --------------------------------------------------------------------------- ArtPhoto


def test_artphoto(tmp_path):
    root = tmp_path / "artphoto"
    for name in ("amusement_1.jpg", "Sad 2.JPG", "sad_3.jpg", "fear4.jpg", "awe-5.png", "SADNESS_6.jpg"):
        write_image(root / name)
    write_image(root / "cover.jpg")
    (root / "Thumbs.db").write_bytes(b"\0" * 10)
    index = scan_artphoto(root)
    assert index.classes == ["amusement", "awe", "fear", "sadness"]  # `sad` means sadness
    assert index.counts() == {"amusement": 1, "awe": 1, "fear": 1, "sadness": 3}
    assert sorted(p.name for p, _ in index.skipped) == ["Thumbs.db", "cover.jpg"]


# --------------------------------------------------------------------------- IAPS


def make_iaps(tmp_path, anger=8):
    """Negative norms (IAPS,Category codes) and positive norms (per-emotion means) plus the pictures."""
    img = tmp_path / "iaps"
    neg = [("Slide", "category")]
    pos = [("picture", "AmusementMean", "AmusementSD", "Awe Mean", "contentment", "EXCITEMENT_mean")]
    number = 1000
    for code, n in (("D", 10), ("F", 10), ("A", anger), ("DF", 1), ("U", 1)):
        for _ in range(n):
            neg.append((str(number), code))
            write_image(img / f"{number}.jpg", size=(8, 8))
            number += 1
    for _ in range(10):  # amusement wins by its mean (its SD column is larger still, and must be ignored)
        pos.append((f"{number}.0", "5.5", "9.9", "2.0", "3.0", "4.0"))
        write_image(img / f"{number}.jpg", size=(8, 8))
        number += 1
    pos.append(("2352.2", "3.0", "0.1", "3.0", "1.0", "1.0"))  # a tie: no single emotion
    write_image(img / "2352.2.jpg", size=(8, 8))
    for k in range(10):  # excitement wins; decimal picture numbers
        pos.append((f"7{k}.1", "1.0", "1.0", "1.0", "1.0", "6.0"))
        write_image(img / f"7{k}.1.png", size=(8, 8))
    pos.append(("5000", "n/a", "1", "2", "3", "4"))  # a rating missing
    write_image(img / "5000.jpg", size=(8, 8))
    neg.append(("6000", "F"))  # in both tables
    pos.append(("6000", "1", "1", "2", "3", "4"))
    write_image(img / "6000.jpg", size=(8, 8))
    write_image(img / "9999.jpg", size=(8, 8))  # in neither norms file
    write_image(img / "IAPS_1.jpg", size=(8, 8))  # not a picture number
    for name, rows in (("negative.csv", neg), ("positive.csv", pos)):
        with open(tmp_path / name, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    return img, tmp_path / "negative.csv", tmp_path / "positive.csv"


def test_iaps(tmp_path):
    img, neg, pos = make_iaps(tmp_path)
    with pytest.warns(UserWarning, match=r"dropping class 'anger': 8 image\(s\) < min_count=10"):
        index = scan_iaps(img, neg, pos)
    assert index.classes == ["amusement", "disgust", "excitement", "fear"]
    assert index.counts() == {"amusement": 10, "disgust": 10, "excitement": 10, "fear": 10}
    assert {s.path.name for s in index.samples if s.label == "excitement"} == {f"7{k}.1.png" for k in range(10)}
    reasons = {p.name: r for p, r in index.skipped}
    assert reasons["1028.jpg"].startswith("category DF is a blend (disgust+fear)")
    assert reasons["1029.jpg"].startswith("category U (undifferentiated)")
    assert reasons["2352.2.jpg"].startswith("tie between amusement and awe")
    assert reasons["9999.jpg"] == "picture 9999 is in neither norms file"
    assert reasons["5000.jpg"] == "a missing or non-numeric mean rating in positive.csv"
    assert reasons["6000.jpg"] == "picture 6000 is listed more than once in the norms (negative.csv, positive.csv)"
    assert "not an IAPS picture number" in reasons["IAPS_1.jpg"]
    anger = [r for r in reasons.values() if r.startswith("class anger dropped")]
    assert len(anger) == 8 and anger[0] == "class anger dropped: 8 image(s) < min_count=10"


def test_iaps_keeps_anger_when_enough(tmp_path):
    img, neg, pos = make_iaps(tmp_path, anger=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no class is under min_count=8: no warning
        index = scan_iaps(img, neg, pos, min_count=8)
    assert index.counts()["anger"] == 8


def test_iaps_bad_norms(tmp_path):
    img, neg, pos = make_iaps(tmp_path)
    pos.write_text("picture,AmusementMean,AweMean,ContentmentMean\n1,1,2,3\n")
    with pytest.raises(DataError, match="positive.csv.*missing excitement"):
        scan_iaps(img, neg, pos)


# --------------------------------------------------------------------------- splits (Sec. 4.3)


def test_make_split_stratified_and_seeded():
    targets = [0] * 100 + [1] * 40 + [2] * 20 + [3] * 7
    splits = make_split(targets, seed=3)
    per_class = {c: Counter(s for s, t in zip(splits, targets) if t == c) for c in range(4)}
    assert per_class[0] == {"train": 80, "test": 15, "val": 5}
    assert per_class[1] == {"train": 32, "test": 6, "val": 2}
    assert per_class[2] == {"train": 16, "test": 3, "val": 1}
    assert per_class[3] == {"train": 6, "test": 1}  # 5.6 / 1.05 / 0.35: largest remainder to train
    assert make_split(targets, seed=3) == splits  # reproducible
    assert make_split(targets, seed=4) != splits  # and the seed matters
    assert set(splits) == {"train", "test", "val"} and len(splits) == len(targets)  # each sample in exactly one


def test_make_split_bad_fractions():
    with pytest.raises(ConfigError, match="fractions"):
        make_split([0, 1], fractions=(0.8, 0.15))
    with pytest.raises(ConfigError, match="sum to 1"):
        make_split([0, 1], fractions=(0.8, 0.15, 0.1))


def test_split_round_trip(fi_folder, tmp_path):
    index = scan_folder(fi_folder)
    splits = make_split(index.targets, fractions=(0.5, 0.25, 0.25), seed=1)
    path = tmp_path / "run" / "split.csv"
    write_split(index, splits, path)
    rows = read_rows(path)
    assert rows[0] == ["path", "label", "split"]
    assert rows[1][0] == "amusement/amusement_0000.jpg"  # relative to the dataset root, posix
    back = read_split(path, root=fi_folder)
    assert [(s.path, s.label, s.split) for s in back.samples] == [
        (s.path, s.label, sp) for s, sp in zip(index.samples, splits)
    ]
    assert back.classes == index.classes
    train, test, val = back.subset("train"), back.subset("test"), back.subset("val")
    assert len(train) + len(test) + len(val) == len(index)
    assert not {s.path for s in train.samples} & {s.path for s in test.samples}
    # amusement 2/1/1, fear 1.5/.75/.75 -> 1/1/1 (largest remainders), sadness 2.5/1.25/1.25 -> 3/1/1
    assert train.classes == index.classes and train.counts() == {"amusement": 2, "fear": 1, "sadness": 3}
    with pytest.raises(ConfigError, match="'dev' not in this index"):
        back.subset("dev")
    with pytest.raises(DataError, match="no split column"):
        index.subset("train")
    verified = read_split(path, root=fi_folder, verify=True)
    assert (verified.samples[0].width, verified.samples[0].height) == (20, 16)


def test_read_split_checks_files_and_labels(fi_folder, tmp_path):
    index = scan_folder(fi_folder)
    path = fi_folder / "split.csv"  # beside the data: root defaults to the CSV's folder
    write_split(index, make_split(index.targets), path)
    assert len(read_split(path)) == 12
    assert len(scan_folder(fi_folder)) == 12  # the split CSV in the root is not mistaken for data
    with pytest.raises(DataError, match="unknown label 'sadness'"):
        read_split(path, classes=["amusement", "fear"])
    (fi_folder / "fear" / "fear_0001.jpg").unlink()
    with pytest.raises(DataError, match=r"fear_0001\.jpg: listed in .*split\.csv.*does not exist"):
        read_split(path)
    with pytest.raises(DataError, match="no split"):
        path.write_text("path,label,split\namusement/amusement_0000.jpg,amusement,\n")
        read_split(path)


def test_write_split_length_mismatch(fi_folder, tmp_path):
    index = scan_folder(fi_folder)
    with pytest.raises(ConfigError, match="11 entries for 12 samples"):
        write_split(index, ["train"] * 11, tmp_path / "s.csv")


# --------------------------------------------------------------------------- five crops (Sec. 4.1)


def test_five_crop_boxes_exact():
    assert five_crop_boxes(10, 8, 4) == [(0, 0, 4, 4), (6, 0, 10, 4), (0, 4, 4, 8), (6, 4, 10, 8), (3, 2, 7, 6)]
    # round half to even, as torchvision's int(round(...)): (9-4)/2 = 2.5 -> 2, (11-4)/2 = 3.5 -> 4
    assert five_crop_boxes(9, 11, 4)[4] == (2, 4, 6, 8)
    assert five_crop_boxes(11, 9, 4)[4] == (4, 2, 8, 6)
    with pytest.raises(ConfigError, match="crop=9"):
        five_crop_boxes(10, 8, 9)


@pytest.mark.parametrize("w, h, c", [(10, 8, 4), (9, 11, 4), (11, 9, 4), (13, 7, 7), (6, 6, 6), (15, 12, 5)])
def test_five_crop_boxes_match_torchvision(w, h, c):
    x = torch.arange(3 * h * w).view(3, h, w)
    for (left, top, right, bottom), ref in zip(five_crop_boxes(w, h, c), TF.five_crop(x, [c, c])):
        assert torch.equal(x[:, top:bottom, left:right], ref)


def norm(x: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x.float() / 255 - mean) / std


def dataset(tmp_path, train, size=(20, 10), resize=8, crop=6, **kw):
    p = write_image(tmp_path / "im.png", size=size)
    q = write_image(tmp_path / "im2.png", size=(size[1], size[0]))
    return EmotionDataset(
        [Sample(p, "awe"), Sample(q, "fear")], {"awe": 0, "fear": 1}, resize=resize, crop=crop, train=train, **kw
    )


def test_resize_shorter_side(tmp_path):
    ds = dataset(tmp_path, train=False, size=(20, 10), resize=8)
    assert tuple(ds.resized(0).shape) == (3, 8, 16) and tuple(ds.resized(1).shape) == (3, 16, 8)
    small = dataset(tmp_path, train=False, size=(6, 4), resize=8)  # smaller than the crop: upscaled
    assert tuple(small.resized(0).shape) == (3, 8, 12)
    ref = TF.pil_to_tensor(TF.resize(load_image(tmp_path / "im.png"), 8, InterpolationMode.BILINEAR, antialias=True))
    assert torch.equal(small.resized(0), ref)


def test_eval_returns_five_torchvision_crops(tmp_path):
    ds = dataset(tmp_path, train=False)
    x, label, i = ds[1]
    assert x.shape == (5, 3, 6, 6) and (label, i) == (1, 1)
    ref = torch.stack([norm(c) for c in TF.five_crop(ds.resized(1), [6, 6])])
    assert torch.allclose(x, ref)


def test_normalisation_values(tmp_path):
    p = write_image(tmp_path / "solid.png", size=(5, 5), color=(255, 0, 128))
    x, _, _ = EmotionDataset([Sample(p, "a")], {"a": 0}, resize=5, crop=5, train=False)[0]
    expect = [
        (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
        -IMAGENET_MEAN[1] / IMAGENET_STD[1],
        (128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
    ]
    assert torch.allclose(x[:, :, 0, 0], torch.tensor(expect).expand(5, 3), atol=1e-6)


def test_train_crop_is_one_of_five_maybe_mirrored_and_seeded(tmp_path):
    ds = dataset(tmp_path, train=True, seed=5)
    crops = TF.five_crop(ds.resized(0), [6, 6])
    candidates = [norm(c) for c in crops] + [norm(c.flip(-1)) for c in crops]
    seen = Counter()
    for epoch in range(60):
        ds.set_epoch(epoch)
        x, label, i = ds[0]
        assert x.shape == (3, 6, 6) and (label, i) == (0, 0)
        k, flip = ds.choice(0)
        assert torch.allclose(x, candidates[k + 5 * flip])
        assert torch.equal(ds[0][0], x)  # same (seed, epoch, index): same crop
        seen[k, flip] += 1
    assert len(seen) == 10  # all five crops, each both ways
    ds.set_epoch(3)
    again = dataset(tmp_path / "b", train=True, seed=5)
    again.set_epoch(3)
    assert torch.equal(again[0][0], ds[0][0])  # a fresh dataset (a resumed run) draws the same
    other = dataset(tmp_path / "c", train=True, seed=6)
    draws = lambda d: [(d.set_epoch(e), d.choice(0))[1] for e in range(20)]  # noqa: E731
    assert draws(other) != draws(ds)


def test_mirror_off_draws_the_same_crops_never_mirrored(tmp_path):
    """data.mirror=false (Sec. 4.1 names only the corner and centre crops): the same crop as with mirroring, unflipped."""
    on, off = dataset(tmp_path, train=True, seed=5), dataset(tmp_path / "b", train=True, seed=5, mirror=False)
    crops = [norm(c) for c in TF.five_crop(on.resized(0), [6, 6])]
    flipped = 0
    for epoch in range(30):
        on.set_epoch(epoch)
        off.set_epoch(epoch)
        (k, flip), (k_off, flip_off) = on.choice(0), off.choice(0)
        assert k_off == k and flip_off is False
        assert torch.allclose(off[0][0], crops[k])
        flipped += flip
    assert flipped > 0  # with mirroring some of the same draws were flipped


def test_the_config_switch_reaches_the_training_loader(tmp_path):
    from emotionlib.config import get_config
    from emotionlib.data import DatasetIndex
    from emotionlib.train import make_loader

    part = DatasetIndex(tmp_path, ["awe"], [Sample(write_image(tmp_path / "a.png", size=(12, 12)), "awe")])
    for mirror in (True, False):
        cfg = get_config("tiny", **{"data.mirror": mirror})
        assert make_loader(part, ["awe"], cfg, train=True).dataset.mirror is mirror
    with pytest.raises(ConfigError, match="data.mirror='no': use true or false"):
        get_config("tiny", **{"data.mirror": "no"})


def test_train_crops_independent_of_workers(tmp_path):
    ds = dataset(tmp_path, train=True, seed=1, cache=False)
    epochs = lambda loader: [torch.cat([x for x, _, _ in (ds.set_epoch(e), loader)[1]]) for e in (2, 9)]  # noqa: E731
    serial = epochs(torch.utils.data.DataLoader(ds, batch_size=1, num_workers=0))
    # persistent workers hold their own copy of the dataset: set_epoch must still reach them
    workers = epochs(torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, persistent_workers=True))
    assert all(torch.equal(a, b) for a, b in zip(serial, workers))
    assert not torch.equal(serial[0], serial[1])


def test_dataset_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="resize=5 is smaller than crop=6"):
        dataset(tmp_path, train=True, resize=5, crop=6)
    with pytest.raises(DataError, match="'awe'"):
        EmotionDataset([Sample(tmp_path / "x.png", "awe")], {"fear": 0}, resize=8, crop=6, train=True)


def test_dataset_names_a_file_gone_bad(tmp_path):
    ds = dataset(tmp_path, train=False)
    (tmp_path / "im.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"im\.png: empty file"):
        ds[0]


# --------------------------------------------------------------------------- pairs (Eq. 3-5)


TARGETS = [0] * 30 + [1] * 20 + [2] * 13 + [3] * 1  # uneven, with a class of one


@pytest.mark.parametrize(
    "batch, fraction, same",
    [(8, 0.5, 2), (10, 0.5, 2), (8, 0.25, 1), (8, 0.0, 0), (8, 1.0, 4), (2, 0.5, 0), (12, 0.3, 2)],
)
def test_pairs_same_and_different_exactly(batch, fraction, same):
    sampler = PairBatchSampler(TARGETS, batch, same_fraction=fraction, seed=0)
    assert sampler.same_per_batch == same  # round(f * pairs per batch)
    batches = list(sampler)
    assert len(batches) == len(sampler) == -(-len(TARGETS) // batch)
    positions = Counter()
    for b in batches:
        assert len(b) == batch
        pairs = [(b[k], b[k + 1]) for k in range(0, batch, 2)]
        assert all(a != p for a, p in pairs)
        flags = [TARGETS[a] == TARGETS[p] for a, p in pairs]
        assert sum(flags) == same
        positions.update(k for k, f in enumerate(flags) if f)
    if 0 < same < batch // 2:
        assert len(positions) > same  # same pairs move around the batch


def test_pairs_cover_the_epoch():
    sampler, coverage = PairBatchSampler(TARGETS, 8, seed=2), []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        shown = [i for b in sampler for i in b]
        assert len(TARGETS) <= len(shown) < len(TARGETS) + 8  # about one image per sample per epoch
        coverage.append(len(set(shown)) / len(TARGETS))
    # partners are drawn from the images not yet shown: random partners would cover about 70 %
    assert min(coverage) >= 0.9 and np.mean(coverage) >= 0.95


def test_pairs_reproducible_from_seed_and_epoch():
    a, b = PairBatchSampler(TARGETS, 8, seed=1), PairBatchSampler(TARGETS, 8, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PairBatchSampler(TARGETS, 8, seed=2)) != list(PairBatchSampler(TARGETS, 8, seed=1))


def test_pairs_replicas_take_whole_batches():
    ranks = [PairBatchSampler(TARGETS, 8, seed=0, num_replicas=3, rank=r) for r in range(3)]
    for s in ranks:
        s.set_epoch(4)
    full = ranks[0].all_batches()
    assert len(full) == 9  # ceil(64 / (8 * 3)) = 3 per rank, padded
    for r, s in enumerate(ranks):
        assert list(s) == full[r::3] and len(s) == 3  # same count on every rank
    assert sorted(b for s in ranks for b in s) == sorted(full)  # a partition of the batches


def test_pairs_with_dataloader(tmp_path):
    ds = dataset(tmp_path, train=True)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=PairBatchSampler(ds.targets, 2))
    ((x, y, idx),) = list(loader)
    assert x.shape == (2, 3, 6, 6) and y.tolist() == [ds.targets[i] for i in idx.tolist()] and y[0] != y[1]


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"batch_size": 7}, "batch_size=7"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"same_fraction": 1.5}, "same_fraction"),
        ({"rank": 2, "num_replicas": 2}, "rank=2"),
    ],
)
def test_pairs_config_errors(kw, message):
    args = {"targets": TARGETS, "batch_size": 8} | kw
    with pytest.raises(ConfigError, match=message):
        PairBatchSampler(**args)


def test_pairs_need_two_classes():
    with pytest.raises(DataError, match="two classes"):
        PairBatchSampler([0, 0, 0, 0], 4)
    assert all(len(set(b)) == 4 for b in PairBatchSampler([0, 0, 0, 0], 4, same_fraction=1.0))


# --------------------------------------------------------------------------- bad input


def test_bad_files_are_skipped_with_reasons(fi_folder):
    fear = fi_folder / "fear"
    (fear / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (fear / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (fear / "text.jpg").write_text("this is not a picture")
    (fear / "notes.txt").write_text("a text file")
    index = scan_folder(fi_folder)
    reasons = {p.name: r for p, r in index.skipped}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["truncated.jpg"].startswith("truncated or corrupt image (OSError: image file is truncated")
    assert reasons["text.jpg"] == "not an image PIL can read"
    assert reasons["notes.txt"].startswith("unsupported extension '.txt'")
    assert index.counts()["fear"] == 3  # the good ones are kept
    out = fi_folder.parent / "skipped.csv"
    index.write_skipped(out)
    rows = read_rows(out)
    assert rows[0] == ["path", "reason"] and ["fear/empty.jpg", "empty file (0 bytes)"] in rows


@pytest.mark.parametrize(
    "mode, color, expect",
    [
        ("L", 77, (77, 77, 77)),
        ("1", 1, (255, 255, 255)),
        ("LA", (100, 0), (255, 255, 255)),  # fully transparent: the white background
        ("LA", (100, 255), (100, 100, 100)),
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30)),
    ],
)
def test_modes_to_rgb(tmp_path, mode, color, expect):
    p = write_image(tmp_path / "m.png", size=(3, 2), color=color, mode=mode)
    im = load_image(p)
    assert im.mode == "RGB" and im.size == (3, 2) and im.getpixel((0, 0)) == expect


def test_palette_and_cmyk(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png")
    assert pixels(load_image(tmp_path / "p.png")) == [[255, 0, 0], [0, 0, 255]]
    pal.save(tmp_path / "pt.png", transparency=0)  # index 0 transparent -> white
    assert pixels(load_image(tmp_path / "pt.png")) == [[255, 255, 255], [0, 0, 255]]
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    assert load_image(tmp_path / "c.tif").getpixel((1, 1)) == (255, 0, 0)


def test_sixteen_bit_is_scaled(tmp_path):
    a = np.array([[0, 65535, 32896, 257]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert [v[0] for v in pixels(load_image(tmp_path / "g16.png"))] == [0, 255, 128, 1]
    b = np.array([[0, 65535, 70000, 257]], dtype=np.int32)
    Image.fromarray(b, "I").save(tmp_path / "g32.tif")
    assert Image.open(tmp_path / "g32.tif").mode == "I"
    assert [v[0] for v in pixels(load_image(tmp_path / "g32.tif"))] == [0, 255, 255, 1]


def test_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    write_image(tmp_path / "FI" / "awe" / "awe_1.jpg", size=(30, 20), exif=exif)
    write_image(tmp_path / "FI" / "fear" / "fear_1.jpg", size=(30, 20))
    index = scan_folder(tmp_path / "FI")
    assert [(s.width, s.height) for s in index.samples] == [(20, 30), (30, 20)]


def test_decompression_bomb_refused_before_decoding(tmp_path):
    big = write_image(tmp_path / "big.png", size=(200, 100))
    data = big.read_bytes()
    (tmp_path / "big_truncated.png").write_bytes(data[: len(data) // 2])
    for name in ("big.png", "big_truncated.png"):  # the header alone decides, not the pixel data
        with pytest.raises(DataError, match="200x100 = 20,000 pixels exceeds max_pixels=10,000"):
            load_image(tmp_path / name, max_pixels=10_000)
    assert load_image(big, max_pixels=20_000).size == (200, 100)
    write_image(tmp_path / "FI" / "awe" / "awe_1.png", size=(200, 100))
    write_image(tmp_path / "FI" / "awe" / "awe_2.png", size=(10, 10))
    write_image(tmp_path / "FI" / "fear" / "fear_1.png", size=(10, 10))
    index = scan_folder(tmp_path / "FI", max_pixels=10_000)
    assert [(p.name, r.split(" exceeds")[0]) for p, r in index.skipped] == [("awe_1.png", "200x100 = 20,000 pixels")]


def test_empty_and_single_class(tmp_path):
    write_image(tmp_path / "A" / "awe" / "awe_1.jpg")
    (tmp_path / "A" / "fear").mkdir()
    with pytest.raises(DataError, match=r"fear.*class folder 'fear' is empty"):
        scan_folder(tmp_path / "A")
    write_image(tmp_path / "B" / "awe" / "awe_1.jpg")
    (tmp_path / "B" / "fear").mkdir()
    (tmp_path / "B" / "fear" / "fear_1.jpg").write_bytes(b"")  # its only image is bad
    with pytest.raises(DataError, match="class 'fear' has no usable image"):
        scan_folder(tmp_path / "B")
    write_image(tmp_path / "C" / "awe" / "awe_1.jpg")
    with pytest.raises(DataError, match=r"found 1 class\(es\) \('awe'\); at least two"):
        scan_folder(tmp_path / "C")


def test_missing_paths(tmp_path):
    with pytest.raises(DataError, match="nope"):
        scan_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="nope.csv"):
        scan_manifest(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="nope"):
        scan_artphoto(tmp_path / "nope")
    with pytest.raises(DataError, match="file does not exist"):
        load_image(tmp_path / "nope.jpg")


# --------------------------------------------------------------------------- inspection


def test_summarise(fi_folder):
    df = summarise(scan_folder(fi_folder))
    assert list(df.index) == ["amusement", "fear", "sadness"]
    assert df["count"].tolist() == [4, 3, 5]
    assert df.loc["sadness", "share"] == pytest.approx(5 / 12)
    # sizes (20 + k, 16 + 2k): amusement k = 0..3
    assert df.loc["amusement", ["width_min", "width_median", "width_max"]].tolist() == [20, 21.5, 23]
    assert df.loc["sadness", ["height_min", "height_median", "height_max"]].tolist() == [16, 20, 24]


def test_index_subset_keeps_class_indices():
    idx = DatasetIndex(
        Path("."),
        ["awe", "fear"],
        [Sample(Path("a"), "fear", split="test"), Sample(Path("b"), "awe", split="train")],
        [],
    )
    assert idx.subset("test").targets == [1] and idx.subset("test").counts() == {"awe": 0, "fear": 1}


def test_loader_demo_shows_a_truncated_and_a_fake_image_left_out(tmp_path):
    good = [write_image(tmp_path / "src" / f"{i}.jpg", size=(64, 48)) for i in range(2)]
    index = scan_folder(write_loader_demo(tmp_path / "demo", good, "awe"))
    assert sorted((s.label, Path(s.path).name) for s in index.samples) == [
        ("anger", "x.jpg"),
        ("awe", "0.jpg"),
        ("awe", "1.jpg"),
    ]
    assert sorted(Path(p).name for p, _ in index.skipped) == ["notes.jpg", "truncated.jpg"]
