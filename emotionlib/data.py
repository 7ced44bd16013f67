"""Datasets of the paper (Sec. 4): FI, ArtPhoto, IAPS-subset; splits, crops and contrastive pairs.

The pipeline, in the order a run uses it:

    index = scan_folder("data/FI")                       # verify every image, keep the bad ones in .skipped
    write_split(index, make_split(index.targets), path)  # 80 / 15 / 5, stratified (Sec. 4.3), written once
    train = read_split(path).subset("train")             # later runs reuse the file: the test set never moves
    ds = EmotionDataset(train.samples, train.class_to_idx, resize=400, crop=375, train=True)
    loader = DataLoader(ds, batch_sampler=PairBatchSampler(train.targets, 64))   # pairs for Eq. 3-5

Nothing here downloads anything; data/README.md says how to obtain and lay out each dataset.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader

from emotionlib.errors import ConfigError, DataError
from emotionlib.paper import CLASSES
from emotionlib.threads import worker_init
from emotionlib.utils import atomic_path, derive_seed, relative_path, write_csv

if TYPE_CHECKING:
    import pandas as pd

    from emotionlib.config import Config

# The eight Mikels emotions in the order of the paper's confusion matrix (Fig. 6); FI names its folders so.
MIKELS_EMOTIONS = CLASSES
# (ours, README deviations) The trunk is trained from scratch (Sec. 4.1 names no pre-training), but ImageNet
# statistics are the customary normalisation; the paper gives none.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# PIL's own default for Image.MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3), fixed here so that a
# library elsewhere changing PIL's global does not change what we accept.
DEFAULT_MAX_PIXELS = 89_478_485
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
SPLITS = ("train", "test", "val")  # the order of make_split's fractions (Sec. 4.3: 80 / 15 / 5)


# --------------------------------------------------------------------------- index


@dataclass
class Sample:
    """One image: its file, its class name, its size after EXIF rotation (0 = not read) and its split."""

    path: Path
    label: str
    width: int = 0
    height: int = 0
    split: str | None = None


@dataclass
class DatasetIndex:
    """The usable images of a dataset, its classes in a fixed order, and every file left out with why."""

    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Class name -> label index, in `classes` order."""
        return {c: i for i, c in enumerate(self.classes)}

    @property
    def targets(self) -> list[int]:
        """Label index of every sample, in `classes` order."""
        c2i = self.class_to_idx
        return [c2i[s.label] for s in self.samples]

    def counts(self) -> dict[str, int]:
        """Number of samples per class, in `classes` order (zero for a class absent from this index)."""
        out = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            out[s.label] += 1
        return out

    def write_skipped(self, path: str | os.PathLike) -> None:
        """Write the left-out files as a CSV `path,reason` (paths relative to `root` where possible)."""
        rows = [(relative_path(p, self.root), reason) for p, reason in self.skipped]
        write_csv(path, ["path", "reason"], rows)

    def subset(self, split: str) -> "DatasetIndex":
        """The samples of one split ("train", "test" or "val"), with the same classes (so the same indices)."""
        present = sorted({s.split for s in self.samples if s.split is not None})
        if not present:
            raise DataError(
                f"{self.root}: this index has no split column; read it with read_split(), "
                "or make one with make_split() and write_split()"
            )
        if split not in present:
            raise ConfigError(f"split {split!r} not in this index (it has {', '.join(present)})")
        return DatasetIndex(self.root, list(self.classes), [s for s in self.samples if s.split == split], [])

    def parts(self) -> dict[str, "DatasetIndex"]:
        """The train, val and test parts of a split index (read_split), each with every class; unlike subset(), a
        part may be empty (5 % of 10 images)."""
        return {
            name: DatasetIndex(self.root, list(self.classes), [s for s in self.samples if s.split == name], [])
            for name in ("train", "val", "test")
        }


def order_classes(names: Iterable[str]) -> list[str]:
    """Mikels emotions first in the paper's Fig. 6 order, any other class name alphabetically after them."""
    names = set(names)
    return [e for e in MIKELS_EMOTIONS if e in names] + sorted(names - set(MIKELS_EMOTIONS))


# --------------------------------------------------------------------------- images


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image as RGB with its EXIF orientation applied.

    Raises DataError whose message is the reason alone (callers add the path): missing or empty file,
    not an image, larger than `max_pixels` (refused from the header, before decoding: a decompression
    bomb), truncated or corrupt data.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file does not exist")
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below replaces PIL's warning; PIL's hard error (twice its limit) stays.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DataError(
                        f"{w}x{h} = {w * h:,} pixels exceeds max_pixels={max_pixels:,} "
                        "(refused before decoding as a possible decompression bomb)"
                    )
                im.load()  # decode everything now, so that a truncated file fails here and not mid-training
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise DataError(f"refused as a possible decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise DataError("not an image PIL can read") from None
    except Exception as e:  # noqa: BLE001  OSError, SyntaxError, struct.error...: whatever PIL raises, the file is bad
        raise DataError(f"truncated or corrupt image ({type(e).__name__}: {e})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB: transparency composited on white, 16-bit scaled (65535 -> 255)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (PNG/TIFF): PIL's convert("L") would clip at 255 instead of scaling.
        # "I" is what PIL uses for 16-bit data too, so it is read on the same 0..65535 scale.
        a = np.asarray(im, dtype=np.float64).clip(0, 65535)
        return Image.fromarray(np.rint(a * (255 / 65535)).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "La", "PA", "RGBa", "RGBA"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV, F


def _verify_all(paths: Sequence[Path], max_pixels: int, progress: bool) -> list[tuple[int, int] | str]:
    """Decode every file: its (width, height) after rotation, or the reason it cannot be used."""
    it: Iterable[Path] = paths
    if progress:
        from .utils import progress_bar

        it = progress_bar(len(paths), "verifying images", iterable=paths, unit="img")
    out: list[tuple[int, int] | str] = []
    for p in it:
        if _unsupported(p):
            out.append(_unsupported(p))
            continue
        try:
            out.append(load_image(p, max_pixels).size)
        except DataError as e:
            out.append(str(e))
    return out


def _unsupported(p: Path) -> str | None:
    if p.suffix.lower() in IMAGE_EXTENSIONS:
        return None
    return f"unsupported extension {p.suffix or '(none)'!r}; expected one of {' '.join(sorted(IMAGE_EXTENSIONS))}"


def _check_utf8(p: Path) -> None:
    """split.csv and skipped.csv are UTF-8: a file name that is not cannot be written there, so `data` and `train`
    both refuse it up front."""
    try:
        str(p).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(p).decode("utf-8", "backslashreplace")
        raise DataError(f"{shown}: the file name is not valid UTF-8; rename the file") from None


def _build_index(
    root: Path,
    labelled: list[tuple[Path, str, str | None]],
    skipped: list[tuple[Path, str]],
    max_pixels: int,
    progress: bool,
    what: str,
) -> DatasetIndex:
    """Verify labelled files, move the bad ones to skipped, check that every class kept an image."""
    for p in [p for p, _, _ in labelled] + [p for p, _ in skipped]:
        _check_utf8(p)
    results = _verify_all([p for p, _, _ in labelled], max_pixels, progress)
    samples, skipped, failed = [], list(skipped), dict.fromkeys((label for _, label, _ in labelled), 0)
    for (p, label, split), r in zip(labelled, results):
        if isinstance(r, str):
            skipped.append((p, r))
            failed[label] += 1
        else:
            samples.append(Sample(p, label, r[0], r[1], split))
    return _finish(root, samples, skipped, failed, what)


def _finish(
    root: Path, samples: list[Sample], skipped: list[tuple[Path, str]], failed: dict[str, int], what: str
) -> DatasetIndex:
    """Refuse a class that lost all its images, or fewer than two classes; else the index."""
    kept = {s.label for s in samples}
    for label in order_classes(failed):
        if label not in kept:
            raise DataError(
                f"{what}: class {label!r} has no usable image (its {failed[label]} file(s) are "
                "in the skipped list); fix or remove them"
            )
    if len(kept) < 2:
        found = ", ".join(repr(c) for c in order_classes(kept)) or "none"
        raise DataError(f"{what}: found {len(kept)} class(es) ({found}); at least two are needed")
    return DatasetIndex(root, order_classes(kept), samples, skipped)


# --------------------------------------------------------------------------- FI, manifests, ArtPhoto, IAPS

_FLAT_NAME = re.compile(r"^([A-Za-z][A-Za-z\-]*)_(.+)$")  # FI flat: <emotion>_<id>
_ARTPHOTO_NAME = re.compile(r"^([A-Za-z]+)[ _\-]?(\d+)$")  # ArtPhoto: <emotion>[_ -]<n>


def _check_dir(root: str | os.PathLike, what: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: {what} does not exist; see data/README.md for how to obtain and lay it out")
    if not root.is_dir():
        raise DataError(f"{root}: {what} is not a directory (for a CSV manifest use scan_manifest)")
    return root


# Files beside the images that describe them (factors.csv, synth_meta.json, a README, a split CSV): not data.
METADATA_EXTENSIONS = {".csv", ".json", ".md", ".txt", ".yml", ".yaml"}


def _metadata(p: Path, root: Path) -> bool:
    return p.parent == root and p.suffix.lower() in METADATA_EXTENSIONS


def _visible(name: str) -> bool:
    # Hidden files (.DS_Store, macOS "._x.jpg") and archive debris folders (__MACOSX) are not data.
    return not (name.startswith(".") or name.startswith("__"))


def _files(folder: Path) -> list[Path]:
    """Every visible file under `folder`, recursively, sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and all(_visible(part) for part in p.relative_to(folder).parts)
    )


def scan_folder(
    root: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False
) -> DatasetIndex:
    """Index FI as published (You et al. 2016): one folder per emotion, or one flat folder of <emotion>_<id>.jpg.

    The layout is detected: sub-folders make the class-folder layout (each folder's lower-cased name is a
    class; image files loose in `root` are skipped, other loose files such as a README or a split CSV are
    ignored); no sub-folders means the flat layout. Every image is decoded once; unusable files end up in
    `.skipped` with their reason. Raises DataError for a missing root, an empty class, or fewer than two classes.
    """
    root = _check_dir(root, "dataset folder")
    entries = sorted(p for p in root.iterdir() if _visible(p.name))
    folders = [p for p in entries if p.is_dir()]
    labelled: list[tuple[Path, str, str | None]] = []
    skipped: list[tuple[Path, str]] = []
    if folders:
        by_label: dict[str, Path] = {}
        for d in folders:  # labels are lower-cased: FEAR/ and fear/ would merge into one class unseen
            other = by_label.setdefault(d.name.lower(), d)
            if other is not d:
                raise DataError(
                    f"{root}: class folders {other.name!r} and {d.name!r} differ only in case; merge or rename them"
                )
        for d in folders:
            files = _files(d)
            if not files:
                raise DataError(f"{d}: class folder {d.name!r} is empty; add its images or remove the folder")
            labelled += [(p, d.name.lower(), None) for p in files]
        skipped += [
            (p, "image outside the class folders")
            for p in entries
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        ]
    else:
        for p in entries:
            m = _FLAT_NAME.match(p.stem)
            if _metadata(p, root):
                continue
            if _unsupported(p):  # checked first: a stray notes_1.txt must not become a class "notes"
                skipped.append((p, _unsupported(p)))
            elif m:
                labelled.append((p, m.group(1).lower(), None))
            else:
                skipped.append((p, "file name is not <emotion>_<id> (e.g. amusement_0001.jpg)"))
    if not labelled:
        raise DataError(f"{root}: no images found; expected one folder per emotion or <emotion>_<id>.jpg files")
    return _build_index(root, labelled, skipped, max_pixels, progress, str(root))


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The lower-cased header and the non-blank rows as (line number, {column: stripped value})."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: drop the BOM that Excel writes
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")  # the norms tables exported from old spreadsheets
    reader = csv.reader(io.StringIO(text))
    rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: empty CSV; expected a header row")
    header = [c.strip().lower() for c in rows[0][1]]
    return header, [(n, dict(zip(header, (c.strip() for c in r)))) for n, r in rows[1:]]


def _read_manifest(
    csv_path: str | os.PathLike, base: Path | None, classes: Sequence[str] | None, need_split: bool
) -> tuple[Path, list[tuple[Path, str, str | None]]]:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: manifest does not exist")
    header, rows = _read_csv(csv_path)
    want = ["path", "label"] + (["split"] if need_split else [])
    missing = [c for c in want if c not in header]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; "
            f"expected a header {','.join(want)}{'' if need_split else '[,split]'}"
        )
    base = csv_path.parent if base is None else Path(base)
    known = set(classes) if classes is not None else None
    out, seen = [], {}
    for n, row in rows:
        rel, label, split = row.get("path", ""), row.get("label", "").lower(), row.get("split") or None
        if not rel:
            raise DataError(f"{csv_path}: line {n} has an empty path")
        if not label:
            raise DataError(f"{csv_path}: line {n} ({rel}) has an empty label")
        if known is not None and label not in known:
            raise DataError(
                f"{csv_path}: line {n}: unknown label {label!r} for {rel}; expected one of {', '.join(classes)}"
            )
        if split is not None:
            split = split.lower()
            if split not in SPLITS:
                raise DataError(f"{csv_path}: line {n}: unknown split {split!r}; expected train, test or val")
        if need_split and split is None:
            raise DataError(f"{csv_path}: line {n} ({rel}) has no split")
        p = Path(rel) if Path(rel).is_absolute() else base / rel
        if not p.is_file():
            raise DataError(
                f"{p}: listed in {csv_path} (line {n}) but does not exist"
                + ("" if Path(rel).is_absolute() else f"; paths are relative to {base}")
            )
        key = p.resolve()  # as the file system sees it: `a/../a/x.jpg`, an absolute path and a symlink are one file
        if key in seen:  # the same image twice could put it in train and test at once
            raise DataError(
                f"{csv_path}: line {n} repeats {rel}: the same file as line {seen[key][0]} "
                f"({seen[key][1]}); list each image once"
            )
        seen[key] = (n, rel)
        out.append((p, label, split))
    if not out:
        raise DataError(f"{csv_path}: manifest lists no images")
    return base, out


def scan_manifest(
    csv_path: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> DatasetIndex:
    """Index a CSV manifest `path,label[,split]`; paths are relative to the CSV's folder, or absolute.

    Every image is decoded once (bad ones go to `.skipped`). A missing file, a repeated path, an empty
    label, or a label outside `classes` (when given; they then are the index's classes, in that order) is a
    DataError naming the file and line.
    """
    base, labelled = _read_manifest(csv_path, None, classes, need_split=False)
    index = _build_index(base, labelled, [], max_pixels, progress, str(csv_path))
    if classes is not None:
        index.classes = list(classes)
    return index


def scan_artphoto(
    root: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False
) -> DatasetIndex:
    """Index ArtPhoto (Machajdik & Hanbury 2010): a flat folder of <emotion>_<n>.jpg, where `sad` is sadness.

    Lenient about names: any case, and `_`, `-`, a space or nothing before the number (`Sad 12.JPG`,
    `fear3.jpg`). Every image is decoded once, as in scan_folder.
    """
    root = _check_dir(root, "ArtPhoto folder")
    labelled, skipped = [], []
    for p in _files(root):
        m = _ARTPHOTO_NAME.match(p.stem)
        if _metadata(p, root):
            continue
        if _unsupported(p):
            skipped.append((p, _unsupported(p)))
        elif m:
            label = m.group(1).lower()
            labelled.append((p, "sadness" if label == "sad" else label, None))
        else:
            skipped.append((p, "file name is not <emotion>_<n> (e.g. sad_12.jpg)"))
    if not labelled:
        raise DataError(f"{root}: no ArtPhoto images found; expected files named <emotion>_<n>.jpg")
    return _build_index(root, labelled, skipped, max_pixels, progress, f"ArtPhoto {root}")


# Mikels et al. (2005), negative table: single-letter category codes; blends like "DF" are not one emotion.
IAPS_NEGATIVE_CODES = {"A": "anger", "D": "disgust", "F": "fear", "S": "sadness"}
IAPS_POSITIVE = ("amusement", "awe", "contentment", "excitement")
_PICTURE_COLUMNS = (
    "iaps",
    "slide",
    "picture",
    "pic",
    "id",
    "iapsnumber",
    "iapsno",
    "iapsid",
    "picturenumber",
    "pictureno",
    "slidenumber",
    "slideno",
    "number",
    "no",
    "image",
)


def _norm_col(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def _find_col(header: list[str], candidates: Sequence[str]) -> str | None:
    by_norm = {_norm_col(h): h for h in reversed(header)}  # first spelling wins on a collision
    return next((by_norm[c] for c in candidates if c in by_norm), None)


def _picture_key(text: str) -> str | None:
    """IAPS picture number as written in file names and tables: "1050", "2352.2" ("1050.0" -> "1050")."""
    m = re.fullmatch(r"0*(\d+)(?:\.(\d+))?", text.strip())
    if not m:
        return None
    whole, frac = m.group(1), (m.group(2) or "").rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def _iaps_norms(
    negative_csv: str | os.PathLike, positive_csv: str | os.PathLike
) -> tuple[dict[str, str], dict[str, str]]:
    """Picture number -> emotion, and picture number -> why it has none (blends, U, ties)."""
    labels: dict[str, str] = {}
    reasons: dict[str, str] = {}
    sources: dict[str, Path] = {}

    def put(path: Path, key: str, label: str | None, reason: str | None) -> None:
        if key in sources:  # listed twice (in one file or both): no single emotion to trust
            labels.pop(key, None)
            reasons[key] = f"picture {key} is listed more than once in the norms ({sources[key].name}, {path.name})"
            return
        sources[key] = path
        if label:
            labels[key] = label
        else:
            reasons[key] = reason or "no emotion"

    neg, pos = Path(negative_csv), Path(positive_csv)
    for path in (neg, pos):
        if not path.is_file():
            raise DataError(
                f"{path}: norms file does not exist; export the Mikels et al. (2005) table as CSV (see data/README.md)"
            )
    header, rows = _read_csv(neg)
    pic = _find_col(header, _PICTURE_COLUMNS)
    cat = _find_col(header, ("category", "cat", "emotioncategory", "categories"))
    if pic is None or cat is None:
        raise DataError(
            f"{neg}: needs a picture-number column (e.g. IAPS, Slide, picture, id) and a "
            f"Category column; found {', '.join(header)}"
        )
    for _, row in rows:
        key = _picture_key(row.get(pic, ""))
        if key is None:
            continue  # footnotes and blank spreadsheet rows
        code = re.sub(r"[^A-Z]", "", row.get(cat, "").upper())
        if code in IAPS_NEGATIVE_CODES:
            put(neg, key, IAPS_NEGATIVE_CODES[code], None)
        elif code == "U":
            put(neg, key, None, "category U (undifferentiated) is not a single-emotion image")
        elif code and set(code) <= set(IAPS_NEGATIVE_CODES):
            names = "+".join(IAPS_NEGATIVE_CODES[c] for c in code)
            put(neg, key, None, f"category {code} is a blend ({names}), not a single-emotion image")
        else:
            put(neg, key, None, f"unknown category code {row.get(cat, '')!r} in {neg.name}")

    header, rows = _read_csv(pos)
    pic = _find_col(header, _PICTURE_COLUMNS)
    cols = {e: _find_col(header, (e + "mean", "mean" + e, e + "m", e + "avg", e + "average", e)) for e in IAPS_POSITIVE}
    absent = [e for e, c in cols.items() if c is None]
    if pic is None or absent:
        raise DataError(
            f"{pos}: needs a picture-number column and mean ratings for "
            f"{', '.join(IAPS_POSITIVE)} (e.g. AmusementMean); missing "
            f"{', '.join(absent) if absent else 'the picture-number column'}"
        )
    for _, row in rows:
        key = _picture_key(row.get(pic, ""))
        if key is None:
            continue
        try:
            means = {e: float(row.get(c, "")) for e, c in cols.items()}
        except ValueError:
            means = {}
        if len(means) < len(cols) or not all(map(math.isfinite, means.values())):
            put(pos, key, None, f"a missing or non-numeric mean rating in {pos.name}")
            continue
        best = max(means.values())
        top = [e for e in IAPS_POSITIVE if means[e] == best]
        if len(top) == 1:
            put(pos, key, top[0], None)
        else:
            put(pos, key, None, f"tie between {' and '.join(top)} (mean {best:g}): no single emotion")
    return labels, reasons


def scan_iaps(
    image_dir: str | os.PathLike,
    negative_csv: str | os.PathLike,
    positive_csv: str | os.PathLike,
    *,
    min_count: int = 10,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> DatasetIndex:
    """Index the IAPS-subset: images named by IAPS picture number, labelled by the Mikels et al. (2005) norms.

    Negative pictures take their single-letter Category (A anger, D disgust, F fear, S sadness); blends
    (`DF`) and `U` are skipped with that reason. Positive pictures take the emotion with the highest mean
    rating (amusement, awe, contentment, excitement); ties are skipped. A class with fewer than `min_count`
    images is dropped with a warning - the paper (Sec. 4.4) drops anger, which has 8.
    Every labelled image is decoded once, as in scan_folder.
    """
    root = _check_dir(image_dir, "IAPS image folder")
    labels, reasons = _iaps_norms(negative_csv, positive_csv)
    labelled, skipped = [], []
    for p in _files(root):
        key = _picture_key(p.stem)
        if _unsupported(p):
            skipped.append((p, _unsupported(p)))
        elif key is None:
            skipped.append((p, "file name is not an IAPS picture number (e.g. 1050.jpg, 2352.2.jpg)"))
        elif key in labels:
            labelled.append((p, labels[key], None))
        else:
            skipped.append((p, reasons.get(key, f"picture {key} is in neither norms file")))
    if not labelled:
        raise DataError(f"{root}: no image matches a picture number in the norms files")
    index = _build_index(root, labelled, skipped, max_pixels, progress, f"IAPS {root}")
    counts = index.counts()
    small = [c for c in index.classes if counts[c] < min_count]
    for c in small:
        warnings.warn(
            f"IAPS: dropping class {c!r}: {counts[c]} image(s) < min_count={min_count}, too few "
            "to train and test a classifier (the paper drops anger for this, Sec. 4.4)",
            stacklevel=2,
        )
    if small:
        keep = [s for s in index.samples if s.label not in small]
        dropped = [
            (s.path, f"class {s.label} dropped: {counts[s.label]} image(s) < min_count={min_count}")
            for s in index.samples
            if s.label in small
        ]
        index = _finish(root, keep, index.skipped + dropped, dict.fromkeys({s.label for s in keep}, 0), f"IAPS {root}")
    return index


def open_dataset(path: str | os.PathLike, **kw) -> DatasetIndex:
    """A directory -> scan_folder (FI layouts); a .csv file -> scan_manifest. Keyword arguments pass through."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: does not exist; give a dataset folder or a CSV manifest")
    if path.is_dir():
        return scan_folder(path, **kw)
    if path.suffix.lower() == ".csv":
        return scan_manifest(path, **kw)
    raise DataError(f"{path}: neither a folder nor a .csv manifest")


# --------------------------------------------------------------------------- splits (Sec. 4.3)


def make_split(targets: Sequence, fractions: Sequence[float] = (0.8, 0.15, 0.05), seed: int = 0) -> list[str]:
    """Stratified random split: "train" / "test" / "val" for each sample, in `fractions` order (Sec. 4.3).

    Each class is shuffled by one generator seeded with `seed` and cut by largest-remainder rounding, so
    every class has the requested proportions to within one image and the result depends only on the seed.
    """
    fr = np.asarray(fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise ConfigError(
            f"fractions={tuple(fractions)}: give three non-negative numbers (train, test, val) that sum to 1"
        )
    targets = list(targets)
    out: list[str] = [""] * len(targets)
    rng = np.random.default_rng(seed)
    for c in sorted(set(targets)):
        idx = np.array([i for i, t in enumerate(targets) if t == c])
        idx = idx[rng.permutation(len(idx))]
        exact = fr * len(idx)
        n = np.floor(exact).astype(int)
        # Hand the images lost to flooring to the largest remainders (ties: train, then test, then val).
        for k in np.argsort(-(exact - n), kind="stable")[: len(idx) - n.sum()]:
            n[k] += 1
        for name, lo, hi in zip(SPLITS, np.r_[0, np.cumsum(n)[:-1]], np.cumsum(n)):
            for i in idx[lo:hi]:
                out[i] = name
    return out


def write_split(index: DatasetIndex, splits: Sequence[str], path: str | os.PathLike) -> None:
    """Write `path,label,split` for every sample (paths relative to index.root where possible), atomically.

    Later runs read this file with read_split instead of splitting again, so the test set never moves.
    """
    if len(splits) != len(index.samples):
        raise ConfigError(f"splits has {len(splits)} entries for {len(index.samples)} samples")
    bad = sorted(set(splits) - set(SPLITS))
    if bad:
        raise ConfigError(f"unknown split name(s) {', '.join(map(repr, bad))}; use train, test or val")
    rows = [(relative_path(s.path, index.root), s.label, sp) for s, sp in zip(index.samples, splits)]
    write_csv(path, ["path", "label", "split"], rows)


def read_split(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    classes: Sequence[str] | None = None,
    verify: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
) -> DatasetIndex:
    """Read a split CSV written by write_split; every sample carries its `.split`.

    Paths are relative to `root` (default: the CSV's folder). Every file must exist and every label be one
    of `classes` when given (DataError naming the file otherwise). Images are not decoded unless `verify`,
    which also fills width/height and refuses a damaged image: a split cannot silently lose one.
    """
    base, labelled = _read_manifest(
        path, None if root is None else _check_dir(root, "dataset root"), classes, need_split=True
    )
    samples = [Sample(p, label, split=split) for p, label, split in labelled]
    if verify:
        for s, r in zip(samples, _verify_all([s.path for s in samples], max_pixels, progress)):
            if isinstance(r, str):
                raise DataError(f"{s.path}: {r} (listed in {path}; restore the file or make a new split)")
            s.width, s.height = r
    names = classes if classes is not None else order_classes({s.label for s in samples})
    if len(set(names)) < 2:
        raise DataError(f"{path}: lists {len(set(names))} class(es); at least two are needed")
    return DatasetIndex(base, list(names), samples, [])


# --------------------------------------------------------------------------- transforms (Sec. 4.1)


def five_crop_boxes(width: int, height: int, crop: int) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) of the four corner crops and the centre crop, in torchvision's FiveCrop order.

    Sec. 4.1: "the size of the input patches is cropped as 375x375 from the corners and the center".
    Order: top-left, top-right, bottom-left, bottom-right, centre; the centre offset is
    int(round((W - crop) / 2)) as in torchvision's center_crop.
    """
    if crop <= 0 or crop > width or crop > height:
        raise ConfigError(f"crop={crop} does not fit a {width}x{height} image")
    r, b = width - crop, height - crop
    cl, ct = int(round(r / 2.0)), int(round(b / 2.0))
    return [
        (0, 0, crop, crop),
        (r, 0, width, crop),
        (0, b, crop, height),
        (r, b, width, height),
        (cl, ct, cl + crop, ct + crop),
    ]


def resize_shorter(im: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (bilinear, antialiased: PIL always filters when it shrinks).

    Exactly torchvision's `resize(im, size, BILINEAR)` on a PIL image (same output size, same call to PIL), written
    out so that loading data does not import torchvision, which pulls in torch._dynamo and doubles the start-up
    time of `emotionlib predict`.
    """
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return im if (new_w, new_h) == (w, h) else im.resize((new_w, new_h), Image.BILINEAR)


def to_uint8_tensor(im: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 (3, H, W) tensor: a CHW view of the HWC pixels, as torchvision's pil_to_tensor."""
    return torch.from_numpy(np.array(im, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class DiskCache:
    """Decoded, resized images as one uint8 .npy file each, so that later epochs skip JPEG decoding and resizing.

    A file's key is its resolved path, size and modification time, the resize and the format version: an image
    that changes on disk (or a new `resize`) misses the cache and is decoded again. Files are written atomically,
    so DataLoader workers and DistributedDataParallel ranks can share one folder. Nothing is held in memory: the
    page cache keeps the hot files, and the process's memory does not grow with the dataset. The folder costs
    about 3 * resize * longer side bytes per image (FI at resize 400: about 14 GB); stale entries are never read
    and may be deleted at any time.
    """

    FORMAT = 1

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, image: Path, resize: int, max_pixels: int) -> Path:
        st = os.stat(image)
        key = f"{self.FORMAT}|{Path(image).resolve()}|{st.st_size}|{st.st_mtime_ns}|{resize}|{max_pixels}"
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / h[:2] / f"{h[2:]}.npy"

    def load(self, path: Path) -> torch.Tensor | None:
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # absent, or damaged: decode the image again
            return None
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            return None
        return torch.from_numpy(a).permute(2, 0, 1)  # the same CHW view of HWC pixels as to_uint8_tensor

    def store(self, path: Path, x: torch.Tensor) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, x.permute(1, 2, 0).numpy(), allow_pickle=False)


class EmotionDataset(torch.utils.data.Dataset):
    """Images as normalised crops: one random corner/centre crop, maybe mirrored (train), or all five (eval).

    Each image is resized so its shorter side is `resize` (bilinear, antialiased; smaller images are
    upscaled), then cropped to `crop` x `crop` at the four corners and the centre (Sec. 4.1). Training draws
    one of the five uniformly and, with `mirror` (ours: the paper names only the five crops), mirrors it with
    p = 0.5, from a generator seeded by (seed, epoch, index), so a sample's crop does not depend on DataLoader
    workers and a resumed run sees the same crops; call set_epoch each epoch. `mirror=False` draws the same
    crops, never mirrored. `cache` keeps each resized uint8 image in memory (per worker process: about
    3 * resize * longer side bytes per image, so turn it off for FI at full size with little RAM).
    `disk_cache` (a folder) keeps them on disk instead (DiskCache): the same tensors, without the memory.
    Items are (image, label index, sample index).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_to_idx: dict[str, int],
        *,
        resize: int,
        crop: int,
        train: bool,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache: bool = True,
        disk_cache: str | os.PathLike | None = None,
        mirror: bool = True,
    ):
        if crop <= 0:
            raise ConfigError(f"crop={crop}: must be a positive number of pixels")
        if resize < crop:
            raise ConfigError(
                f"resize={resize} is smaller than crop={crop}; the shorter side must be at least the crop size"
            )
        unknown = sorted({s.label for s in samples} - set(class_to_idx))
        if unknown:
            raise DataError(
                f"labels {', '.join(map(repr, unknown))} are not in class_to_idx ({', '.join(class_to_idx)})"
            )
        if seed < 0:
            raise ConfigError(f"seed={seed}: must be >= 0")
        self.samples = list(samples)
        self.class_to_idx = dict(class_to_idx)
        self.targets = [self.class_to_idx[s.label] for s in self.samples]
        self.resize, self.crop, self.train, self.mirror = int(resize), int(crop), bool(train), bool(mirror)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.seed, self.max_pixels = int(seed), max_pixels
        # The epoch lives in shared memory so that persistent DataLoader workers see set_epoch too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None
        self.disk_cache = DiskCache(disk_cache) if disk_cache else None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose crops and flips __getitem__ draws (also in already running workers)."""
        if not 0 <= epoch < 2**63:
            raise ConfigError(f"epoch={epoch}: must be a non-negative 63-bit integer")
        self._epoch.fill_(int(epoch))

    def resized(self, i: int) -> torch.Tensor:
        """Sample i as a uint8 tensor (3, H, W) whose shorter side is `resize`."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        s = self.samples[i]
        x = entry = None
        if self.disk_cache is not None and Path(s.path).is_file():
            entry = self.disk_cache.path(s.path, self.resize, self.max_pixels)
            x = self.disk_cache.load(entry)
        if x is None:
            try:
                im = load_image(s.path, self.max_pixels)
            except DataError as e:
                raise DataError(f"{s.path}: {e}; rescan the dataset or restore the file") from None
            x = to_uint8_tensor(resize_shorter(im, self.resize))
            if entry is not None:
                self.disk_cache.store(entry, x)
        if self._cache is not None:
            self._cache[i] = x
        return x

    def choice(self, i: int) -> tuple[int, bool]:
        """The training crop (0-4, FiveCrop order) and mirror flag for sample i in the current epoch."""
        g = np.random.default_rng((self.seed, self.epoch, int(i)))
        k, flip = int(g.integers(5)), bool(g.random() < 0.5)  # both drawn either way: the crop never depends on mirror
        return k, flip and self.mirror

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        x = self.resized(i)
        boxes = five_crop_boxes(x.shape[2], x.shape[1], self.crop)
        if self.train:
            k, flip = self.choice(i)
            l, t, r, b = boxes[k]
            x = x[:, t:b, l:r].flip(-1) if flip else x[:, t:b, l:r]
        out = self.normalise(x)
        if not self.train:
            # (5, 3, crop, crop): the caller averages the five predictions. The crops overlap, so the whole image is
            # normalised once above and the crops are cut from it.
            out = torch.stack([out[:, t:b, l:r] for l, t, r, b in boxes])
        return out, self.targets[i], i

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> (x / 255 - mean) / std, bit for bit, in one contiguous float buffer, in place."""
        out = torch.empty(x.shape, dtype=torch.float32)
        out.copy_(x)
        return out.div_(255).sub_(self.mean).div_(self.std)


# --------------------------------------------------------------------------- pairs (Eq. 3-5)


class PairBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of image pairs for the contrastive loss (Eq. 3-5): positions 2k and 2k+1 form a pair.

    Each batch holds exactly round(same_fraction * batch_size / 2) same-class pairs, at random positions;
    the others pair different classes. An epoch walks a permutation of the dataset as anchors and draws each
    anchor's partner from the required class, preferring images not yet shown this epoch, so an epoch shows
    every image about once (ceil(len / batch) batches, padded so that every rank gets the same number).
    With num_replicas > 1 each rank takes whole batches, batches[rank::num_replicas], so that pairs stay
    intact under DistributedDataParallel. Everything is drawn from (seed, epoch): call set_epoch each epoch.
    """

    def __init__(
        self,
        targets: Sequence[int],
        batch_size: int,
        same_fraction: float = 0.5,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 2 or batch_size % 2:
            raise ConfigError(f"batch_size={batch_size}: pairs need an even batch size of at least 2")
        if not 0 <= same_fraction <= 1:
            raise ConfigError(f"same_fraction={same_fraction}: must be between 0 and 1")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"rank={rank}, num_replicas={num_replicas}: need 0 <= rank < num_replicas")
        if seed < 0:
            raise ConfigError(f"seed={seed}: must be >= 0")
        self.targets = np.asarray(targets, dtype=np.int64)
        self.batch_size, self.seed, self.epoch = batch_size, seed, 0
        self.num_replicas, self.rank = num_replicas, rank
        self.pairs_per_batch = batch_size // 2
        self.same_per_batch = int(round(same_fraction * self.pairs_per_batch))
        self.classes, counts = np.unique(self.targets, return_counts=True)
        if self.same_per_batch and not (counts >= 2).any():
            raise DataError("same-class pairs need a class with at least two images; none has")
        if self.same_per_batch < self.pairs_per_batch and len(self.classes) < 2:
            raise DataError("different-class pairs need at least two classes; the targets hold one")
        self._members = {c: np.flatnonzero(self.targets == c) for c in self.classes}
        per_rank = math.ceil(len(self.targets) / (batch_size * num_replicas))
        self.num_batches = per_rank * num_replicas  # over all ranks

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches __iter__ yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches // self.num_replicas

    def __iter__(self):
        yield from self.all_batches()[self.rank :: self.num_replicas]

    def all_batches(self) -> list[list[int]]:
        """Every rank's batches of this epoch, before each rank takes its share."""
        rng = np.random.default_rng((self.seed, self.epoch))
        walk = _PairWalk(self.targets, self._members, rng)
        batches = []
        for _ in range(self.num_batches):
            same = np.zeros(self.pairs_per_batch, dtype=bool)
            same[rng.choice(self.pairs_per_batch, self.same_per_batch, replace=False)] = True
            batch = []
            for s in same:
                a = walk.anchor(need_mate=bool(s))
                batch += [a, walk.partner(a, same=bool(s))]
            batches.append(batch)
        return batches


class _PairWalk:
    """The anchor walk of one epoch, and per-class pools of the images not yet shown in it."""

    def __init__(self, targets: np.ndarray, members: dict[int, np.ndarray], rng: np.random.Generator):
        self.t, self.members, self.rng = targets, members, rng
        self.has_mate = {c for c, m in members.items() if len(m) >= 2}
        self.classes = np.array(sorted(members))
        self.sizes = np.array([len(members[c]) for c in self.classes], dtype=np.float64)
        self._new_pass()

    def _new_pass(self) -> None:
        # A fresh permutation once every image has been shown (only for the padding of the last batches).
        self.order = self.rng.permutation(len(self.t))
        self.used = np.zeros(len(self.t), dtype=bool)
        self.left = self.sizes.copy()  # images of each class not yet shown
        self.pos = {False: 0, True: 0}  # one pointer for any anchor, one for anchors whose class has a mate
        self.pools = {c: list(self.order[self.t[self.order] == c]) for c in self.members}

    def _take(self, i: int) -> int:
        self.used[i] = True
        self.left[np.searchsorted(self.classes, self.t[i])] -= 1
        return int(i)

    def anchor(self, need_mate: bool) -> int:
        for _ in range(2):
            while self.pos[need_mate] < len(self.order):
                i = self.order[self.pos[need_mate]]
                self.pos[need_mate] += 1
                if not self.used[i] and (not need_mate or self.t[i] in self.has_mate):
                    return self._take(i)
            self._new_pass()
        raise AssertionError("unreachable: the constructor checked that an anchor exists")

    def partner(self, a: int, same: bool) -> int:
        if same:
            c = self.t[a]
        else:
            # Another class in proportion to its images not yet shown (to its size once all are shown),
            # so that the epoch runs out of every class at about the same time.
            w = np.where(self.classes == self.t[a], 0.0, self.left)
            w = w if w.sum() > 0 else np.where(self.classes == self.t[a], 0.0, self.sizes)
            c = self.classes[self.rng.choice(len(w), p=w / w.sum())]
        pool = self.pools[c]
        while pool:
            i = pool.pop()
            if not self.used[i]:
                return self._take(i)
        m = self.members[c]
        m = m[m != a]
        return int(m[self.rng.integers(len(m))])  # every image of that class shown already: any but the anchor


class ShuffleBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Seeded shuffled batches for the fusion stage (no pairs needed); whole batches are split over ranks."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.num_replicas, self.rank, self.epoch = num_replicas, rank, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        perm = torch.randperm(self.n, generator=g).tolist()
        batches = [perm[i : i + self.batch_size] for i in range(0, self.n - self.batch_size + 1, self.batch_size)]
        batches = batches[: len(self) * self.num_replicas]
        return iter(batches[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return (self.n // self.batch_size) // self.num_replicas


def make_loader(part: DatasetIndex, classes: list[str], cfg: Config, train: bool, batch_sampler=None) -> DataLoader:
    d = cfg.data
    ds = EmotionDataset(
        part.samples,
        {c: i for i, c in enumerate(classes)},
        resize=d.resize,
        crop=d.crop,
        train=train,
        seed=cfg.train.seed,
        max_pixels=d.max_pixels,
        cache=d.cache,
        disk_cache=d.disk_cache or None,
        mirror=d.mirror,
    )
    kw: dict[str, Any] = dict(
        num_workers=d.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=d.num_workers > 0,
        worker_init_fn=worker_init if d.num_workers > 0 else None,
    )
    if batch_sampler is not None:
        return DataLoader(ds, batch_sampler=batch_sampler, **kw)
    return DataLoader(ds, batch_size=max(1, cfg.train.batch_size // 2), shuffle=False, **kw)


# --------------------------------------------------------------------------- inspection


def summarise(index: DatasetIndex) -> "pd.DataFrame":
    """One row per class: count, share, and min / median / max width and height (for `emotionlib data DIR`)."""
    import pandas as pd  # here, not at the top: `emotionlib predict` should not pay for pandas at start-up

    rows = []
    total = max(len(index.samples), 1)
    for c in index.classes:
        w = np.array([s.width for s in index.samples if s.label == c and s.width], dtype=np.float64)
        h = np.array([s.height for s in index.samples if s.label == c and s.height], dtype=np.float64)
        n = sum(1 for s in index.samples if s.label == c)
        stat = lambda a, f: float(f(a)) if a.size else float("nan")  # noqa: E731  (0 = size not read)
        rows.append(
            {
                "class": c,
                "count": n,
                "share": n / total,
                "width_min": stat(w, np.min),
                "width_median": stat(w, np.median),
                "width_max": stat(w, np.max),
                "height_min": stat(h, np.min),
                "height_median": stat(h, np.median),
                "height_max": stat(h, np.max),
            }
        )
    return pd.DataFrame(rows).set_index("class")


def write_loader_demo(
    folder: str | os.PathLike, good: Sequence[str | os.PathLike], label: str, other: str = "anger"
) -> Path:
    """A dataset folder that shows what `scan_folder` leaves out: the `good` images in class `label` beside a
    truncated copy of the first and a text file named like an image, and the last good image in class `other`."""
    folder = Path(folder)
    good = [Path(p) for p in good]
    cls = folder / label
    cls.mkdir(parents=True, exist_ok=True)
    for p in good:
        (cls / p.name).write_bytes(p.read_bytes())
    (cls / "truncated.jpg").write_bytes(good[0].read_bytes()[:300])  # a download cut short
    (cls / "notes.jpg").write_text("not an image")  # the right suffix, the wrong content
    (folder / other).mkdir(exist_ok=True)
    (folder / other / "x.jpg").write_bytes(good[-1].read_bytes())
    return folder
