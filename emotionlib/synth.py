"""A built-in synthetic emotion dataset whose classes need cues at three levels.

The paper's premise (Sec. 1, Fig. 1) is that emotion is evoked by stimuli at several
levels - colour (low), texture/composition (mid), objects (high) - and that no single
level suffices; the multi-branch CNN + Bi-GRU (Sec. 3) exists to combine them. This
dataset makes that premise literally true, so the CPU smoke profile has something to
learn in a minute and the probing notebook has ground truth for every level:

- three binary cues, `colour` (warm / cool palette), `texture` (fine stripes / coarse dots
  on the background) and `shape` (one large round / angular object);
- the eight Mikels emotions (Fig. 6 order) are the eight combinations, so each cue alone
  splits the classes only into its own two groups of four (chance within a group);
- everything else (position, scale, rotation, hues inside a palette, clutter, lighting)
  is nuisance, drawn per image and written to `factors.csv`.

The class -> cue map is arbitrary: class i in Fig. 6 order gets the bits of i as
(colour, texture, shape). It says nothing about real emotions.

Images are built in YCbCr (the JPEG colour space): colour lives only in the chroma
planes, texture and lighting only in luma, and both palettes draw luma from the same
distribution, so a cue cannot leak through another level's statistics.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from emotionlib.errors import ConfigError
from emotionlib.paper import CLASSES as MIKELS_EMOTIONS
from emotionlib.utils import atomic_path, write_json, write_text

FORMAT_VERSION = 3  # 3: fainter texture, shallower stars, 80-px images, 10 % label noise (data/README.md)
# Images per class of the built-in set: with 64 training images per class the greedy stages of the smoke profile
# stayed at the colour cue; per epoch, more images taught more than more epochs did.
PER_CLASS = 200
# The built-in set (data/synthetic): 80-px images and 10 % label noise. Format 3 leaves the fine-tuned Bi-GRU of the
# smoke profile below the ceiling, so that Table 1's comparisons have room to show (data/README.md).
BUILTIN = {"per_class": PER_CLASS, "size": 80, "label_noise": 0.10}
JPEG_QUALITY = 90
LAYOUTS = ("fi", "artphoto")

CLASSES = MIKELS_EMOTIONS
FACTORS: dict[str, tuple[str, str]] = {
    "colour": ("warm", "cool"),
    "texture": ("stripes", "dots"),
    "shape": ("round", "angular"),
}
# Arbitrary bijection onto {0,1}^3: the bits of the class index, colour most significant.
CLASS_FACTORS: dict[str, dict[str, str]] = {
    name: {f: FACTORS[f][(i >> (2 - k)) & 1] for k, f in enumerate(FACTORS)} for i, name in enumerate(CLASSES)
}
# ArtPhoto names its files <emotion>_<n>.jpg but shortens sadness to `sad` (Sec. 4.4).
ARTPHOTO_PREFIX: dict[str, str] = {c: ("sad" if c == "sadness" else c) for c in CLASSES}

CUES = {
    "colour": "palette of background and object: warm = chroma angle 105-170 deg "
    "(red-orange-yellow), cool = 290-350 deg (cyan-azure-blue) in the CbCr plane; "
    "luma is drawn independently of the palette",
    "texture": "zero-mean luma pattern on the background (standard deviation 12-20) with the same amplitude for both levels: "
    "stripes = one oriented sinusoidal grating of period 4-6 px (fine), dots = a rotated, "
    "jittered lattice of round dots 10-14 px apart covering a third of the area (coarse); "
    "periods at 128 px",
    "shape": "one large flat object of either palette colour: round = circle or ellipse, "
    "angular = star of 4, 5 or 6 points (inner radius 0.42-0.58 of the outer); all of equal area for a given scale, "
    "lighter or darker than the background by 55-80 luma, kept in the central region "
    "so all five corner crops hold most of it",
}
NUISANCES = {
    "shape_kind": "circle, ellipse (round) or star4, star5, star6 (angular: stars of 4-6 points)",
    "obj_x": "object centre, fraction of width",
    "obj_y": "object centre, fraction of height",
    "obj_scale": "object equivalent-area radius, fraction of image size",
    "obj_rotation": "object rotation, degrees",
    "obj_aspect": "ellipse: major/minor axis ratio (1 for a circle); star: inner/outer radius",
    "bg_hue": "background chroma angle, degrees",
    "obj_hue": "object chroma angle, degrees",
    "bg_chroma": "background chroma radius (0-128 scale)",
    "obj_chroma": "object chroma radius",
    "bg_luma": "background luma before texture and lighting (0-255)",
    "obj_luma": "object luma before lighting",
    "texture_period": "stripe period or dot lattice spacing, pixels at the written size",
    "texture_angle": "orientation of stripes or dot lattice, degrees",
    "texture_amplitude": "standard deviation of the texture in luma units",
    "n_clutter": "number of small neutral-grey distractor shapes behind the object",
    "brightness": "luma offset added to the whole image",
    "contrast": "luma gain about mid-grey",
    "gradient": "luma change across the image of the linear lighting gradient",
    "gradient_angle": "direction of the lighting gradient, degrees",
}
CSV_COLUMNS = ["path", "label", "true_label", "colour", "texture", "shape", *NUISANCES]

_HUES = {"warm": (105.0, 170.0), "cool": (290.0, 350.0)}  # CbCr angle ranges, degrees
_HUE_WINDOW = 45.0  # width of the sub-range sampled; `shift` slides it along the range
# Format 2 (the smoke profile trains stage by stage, Sec. 4.1, and each stage must find its cue in a few epochs).
# Format 1 drew both textures with one period (9-14 px) and amplitude 10-16, and stars 0.38-0.48 deep on objects
# of radius 0.15-0.20: a 1/8-width CNN trained greedily on 640 images learnt only the colour (25 %, exactly what
# colour alone gives). Fine stripes against coarse dots (Tamura's coarseness, one of the texture features of
# Machajdik & Hanbury 2010) fit the first stages' 7-19 px receptive fields; deeper stars on larger objects give
# the third stage (43 px) its cue. Both textures keep one amplitude, so luma variance still says nothing.
TEXTURE_PERIOD = {"stripes": (4.0, 6.0), "dots": (10.0, 14.0)}  # stripe period / dot spacing, px at 128 px
# Format 3 against 2: a fainter texture (2: 14-20) and shallower stars (2: 0.30-0.38), so the mid- and high-level
# cues are learnt only in part by the smoke profile's greedy stages; fainter still (5-11, 0.50-0.70) and they
# were not learnt at all (25 %: colour alone).
TEXTURE_AMPLITUDE = (12.0, 20.0)  # luma standard deviation of the texture, the same for both levels
STAR_DEPTH = (0.42, 0.58)  # inner / outer radius of a star (its points' depth)
OBJECT_SCALE = (0.18, 0.22)  # equivalent-area radius at shift 0, fraction of the image side
_ROUND_KINDS = ("circle", "ellipse")
_ANGULAR_KINDS = ("star4", "star5", "star6")
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered, for clean anti-aliased edges


def _lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    """The generator that renders image `index` of true class `class_index`.

    Seeding per image (not one stream for the whole set) keeps every image the same
    when per_class, label_noise or the layout change.
    """
    return np.random.default_rng([seed, class_index, index])


def _noise_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, class_index, index, 1])


# ----------------------------------------------------------------------------- drawing


def _shape_polygon(kind: str, r_eq: float, aspect: float, rot: float) -> np.ndarray:
    """Vertices (N, 2) about the origin of a shape with area pi * r_eq**2.

    Equal area for every kind means the object's size (and so the share of object
    colour in the image) says nothing about round vs angular.
    """
    if kind in ("circle", "ellipse"):
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        pts = np.stack([r_eq * math.sqrt(aspect) * np.cos(t), r_eq / math.sqrt(aspect) * np.sin(t)], 1)
    elif kind.startswith("star"):  # n points, inner radius q = `aspect` times the outer
        n, q = int(kind[4:]), aspect
        t = np.pi / 2 + np.arange(2 * n) * np.pi / n
        R = r_eq * math.sqrt(math.pi / (n * q * math.sin(math.pi / n)))  # area n q R^2 sin(pi/n)
        pts = R * np.where(np.arange(2 * n)[:, None] % 2 == 0, 1.0, q) * np.stack([np.cos(t), np.sin(t)], 1)
    elif kind in ("square", "triangle"):  # clutter only
        n = 4 if kind == "square" else 3
        t = np.pi / 2 + np.arange(n) * 2 * np.pi / n
        R = r_eq * math.sqrt(2 * math.pi / (n * math.sin(2 * math.pi / n)))  # area n/2 R^2 sin(2 pi/n)
        pts = R * np.stack([np.cos(t), np.sin(t)], 1)
    else:
        raise ValueError(kind)
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    return pts @ np.array([[c, s], [-s, c]])


def _alpha(size: int, pts: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Coverage in [0, 1] of a polygon given in pixels about (cx, cy)."""
    k, out = _SUPERSAMPLE, np.zeros((size, size), np.float32)
    # Draw only the bounding box: clutter is tiny, and a full 4x canvas per shape is most of the time.
    x0, y0 = (max(math.floor(c + pts[:, i].min()) - 1, 0) for i, c in enumerate((cx, cy)))
    x1, y1 = (min(math.ceil(c + pts[:, i].max()) + 1, size) for i, c in enumerate((cx, cy)))
    if x1 <= x0 or y1 <= y0:
        return out
    canvas = Image.new("L", ((x1 - x0) * k, (y1 - y0) * k), 0)
    ImageDraw.Draw(canvas).polygon([((cx + x - x0) * k, (cy + y - y0) * k) for x, y in pts], fill=255)
    box = canvas.resize((x1 - x0, y1 - y0), Image.Resampling.BOX)
    out[y0:y1, x0:x1] = np.asarray(box, dtype=np.float32) / 255.0
    return out


def _texture(kind: str, size: int, period: float, angle: float, rng: np.random.Generator) -> np.ndarray:
    """A zero-mean, unit-std luma pattern, so both textures leave the colour statistics alone."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) - (size - 1) / 2
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    u, v = xx * c + yy * s, -xx * s + yy * c
    if kind == "stripes":
        t = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    else:  # dots: one per lattice cell, covering ~1/3 of the area, jittered inside the cell
        r = 0.33 * period
        u = u + rng.uniform(0, period)
        v = v + rng.uniform(0, period)
        iu, iv = np.floor(u / period).astype(int), np.floor(v / period).astype(int)
        lo = min(iu.min(), iv.min())
        n = max(iu.max(), iv.max()) - lo + 1
        jit = rng.uniform(-1, 1, (n, n, 2)) * max(period / 2 - r - 0.5, 0.0)
        du = u - (iu + 0.5) * period - jit[iu - lo, iv - lo, 0]
        dv = v - (iv + 0.5) * period - jit[iu - lo, iv - lo, 1]
        t = np.clip(r - np.hypot(du, dv) + 0.5, 0, 1)  # one-pixel soft edge against aliasing
    t = t - t.mean()
    return t / max(float(t.std()), 1e-6)


def _chroma(hue: float, radius: float) -> tuple[float, float]:
    h = math.radians(hue)
    return radius * math.cos(h), radius * math.sin(h)


def _ycbcr_to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray) -> np.ndarray:
    # JFIF full-range conversion, the inverse of what the JPEG encoder applies.
    rgb = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render(
    factors: dict, size: int, rng: np.random.Generator, shift: float = 0.0
) -> tuple[Image.Image, np.ndarray, dict]:
    """One image, its boolean object mask, and the nuisance values drawn (useful for tests).

    `factors` maps each of FACTORS to one of its levels. `shift` in [0, 1] moves the
    nuisance distribution (other hues within each palette, smaller objects, more
    clutter, harsher lighting) so a second dataset can differ from the first (Sec. 4.4).
    """
    if set(factors) != set(FACTORS) or any(factors[f] not in FACTORS[f] for f in FACTORS):
        raise ConfigError(f"factors={factors!r}: give one level for each of {dict(FACTORS)}")
    S, sc = size, size / 128  # distances are designed at 128 px and scaled

    # Low level: palette. The hue window slides from one end of the palette to the other with shift.
    lo, hi = _HUES[factors["colour"]]
    if factors["colour"] == "cool":  # slide cool towards cyan, warm towards yellow
        lo, hi = hi - _HUE_WINDOW - shift * (hi - lo - _HUE_WINDOW), hi - shift * (hi - lo - _HUE_WINDOW)
    else:
        lo, hi = lo + shift * (hi - lo - _HUE_WINDOW), lo + _HUE_WINDOW + shift * (hi - lo - _HUE_WINDOW)
    bg_hue, obj_hue = rng.uniform(lo, hi), rng.uniform(lo, hi)
    bg_chroma, obj_chroma = rng.uniform(30, 50), rng.uniform(30, 50)
    bg_luma = rng.uniform(90, 150)
    # The object is lighter or darker than the background by a wide margin: a clear silhouette.
    # The sign is flipped where the first choice would leave [30, 220], so no contrast is clipped.
    obj_luma = bg_luma + rng.choice([-1.0, 1.0]) * rng.uniform(55, 80)
    if not 30 <= obj_luma <= 220:
        obj_luma = 2 * bg_luma - obj_luma

    # Mid level: background texture, fine stripes or coarse dots, one amplitude distribution for both levels.
    period = rng.uniform(*TEXTURE_PERIOD[factors["texture"]]) * sc
    tex_angle = rng.uniform(0, 180)
    tex_amp = rng.uniform(*TEXTURE_AMPLITUDE)
    y = bg_luma + tex_amp * _texture(factors["texture"], S, period, tex_angle, rng)
    cb0, cr0 = _chroma(bg_hue, bg_chroma)
    cb, cr = np.full((S, S), cb0, np.float32), np.full((S, S), cr0, np.float32)

    # Clutter: small neutral shapes of both kinds, so they carry neither colour nor shape.
    n_lo, n_hi = round(_lerp(0, 3, shift)), round(_lerp(3, 7, shift))
    n_clutter = int(rng.integers(n_lo, n_hi + 1))
    for _ in range(n_clutter):
        kind = ("circle", "square", "triangle")[rng.integers(3)]
        pts = _shape_polygon(kind, rng.uniform(0.025, 0.045) * S, 1.0, rng.uniform(0, 360))
        a = _alpha(S, pts, rng.uniform(0.05, 0.95) * S, rng.uniform(0.05, 0.95) * S)
        y = y * (1 - a) + a * rng.uniform(50, 210)
        cb, cr = cb * (1 - a), cr * (1 - a)

    # High level: the object, drawn last so its mask is exactly what is visible.
    kinds = _ROUND_KINDS if factors["shape"] == "round" else _ANGULAR_KINDS
    kind = kinds[rng.integers(len(kinds))]
    # Elongation of an ellipse, inner/outer radius of a star. Deep star points (not triangles or
    # rhombi, whose few corners a small CNN trained from scratch on 640 images barely picks up
    # from ellipses) keep the high-level cue learnable in the smoke profile's minute.
    if kind == "circle":
        aspect = 1.0
    elif kind == "ellipse":
        aspect = rng.uniform(1.2, 1.6)
    else:
        aspect = rng.uniform(*STAR_DEPTH)
    rot = rng.uniform(0, 360)
    lo, hi = OBJECT_SCALE  # shift shrinks the objects by up to 0.04
    scale = rng.uniform(_lerp(lo, lo - 0.04, shift), _lerp(hi, hi - 0.04, shift))
    ox, oy = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    a = _alpha(S, _shape_polygon(kind, scale * S, aspect, rot), ox * S, oy * S)
    cb1, cr1 = _chroma(obj_hue, obj_chroma)
    y, cb, cr = y * (1 - a) + a * obj_luma, cb * (1 - a) + a * cb1, cr * (1 - a) + a * cr1

    # Lighting acts on luma only, so it cannot blur the palette.
    brightness = rng.uniform(-10, 10) + _lerp(0, -20, shift)
    contrast = rng.uniform(_lerp(0.85, 0.7, shift), _lerp(1.15, 1.0, shift))
    gradient = rng.uniform(0, _lerp(25, 50, shift))
    g_angle = rng.uniform(0, 360)
    yy, xx = (np.mgrid[0:S, 0:S].astype(np.float32) - (S - 1) / 2) / S
    ramp = xx * math.cos(math.radians(g_angle)) + yy * math.sin(math.radians(g_angle))
    y = (y - 128) * contrast + 128 + brightness + gradient * ramp

    image = Image.fromarray(_ycbcr_to_rgb(y, cb, cr), "RGB")
    nuisance = dict(
        shape_kind=kind,
        obj_x=ox,
        obj_y=oy,
        obj_scale=scale,
        obj_rotation=rot,
        obj_aspect=aspect,
        bg_hue=bg_hue,
        obj_hue=obj_hue,
        bg_chroma=bg_chroma,
        obj_chroma=obj_chroma,
        bg_luma=bg_luma,
        obj_luma=obj_luma,
        texture_period=period,
        texture_angle=tex_angle,
        texture_amplitude=tex_amp,
        n_clutter=n_clutter,
        brightness=brightness,
        contrast=contrast,
        gradient=gradient,
        gradient_angle=g_angle,
    )
    nuisance = {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in nuisance.items()}
    return image, a >= 0.5, nuisance


# ----------------------------------------------------------------------------- dataset

MAX_PER_CLASS = 100_000  # FI has 23,308 images in all: more is a typo, not a dataset
MAX_SIZE = 2048  # the paper's crops are 375 px; 100,000 px would need 149 GiB for one coordinate grid


def _check_args(per_class, size, seed, label_noise, layout, shift) -> dict:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

    if not is_int(per_class) or not 1 <= per_class <= MAX_PER_CLASS:
        raise ConfigError(f"per_class={per_class!r}: give an integer in [1, {MAX_PER_CLASS}] (images per class)")
    if not is_int(size) or not 32 <= size <= MAX_SIZE:  # the generator holds (2, size, size) grids in memory
        raise ConfigError(f"size={size!r}: give an integer in [32, {MAX_SIZE}] (image side in pixels)")
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed={seed!r}: give an integer >= 0")
    if not is_num(label_noise) or not 0 <= label_noise < 1:
        raise ConfigError(f"label_noise={label_noise!r}: give a probability in [0, 1)")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    if not is_num(shift) or not 0 <= shift <= 1:
        raise ConfigError(f"shift={shift!r}: give a number in [0, 1]")
    return dict(
        per_class=int(per_class),
        size=int(size),
        seed=int(seed),
        label_noise=float(label_noise),
        layout=layout,
        shift=float(shift),
    )


def _read_meta(out: Path) -> dict | None:
    """The folder's synth_meta.json as a dict, or None when it is missing or not a JSON object."""
    try:
        meta = json.loads((out / "synth_meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _existing_output(out: Path, args: dict) -> bool:
    """True if `out` already holds a complete synth output made with `args`; raise if it holds anything else."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out_dir {out}: is a file; give a folder")
    if not out.exists() or not any(out.iterdir()):
        return False
    meta = _read_meta(out)
    if meta is not None and meta.get("format_version") not in (None, FORMAT_VERSION):
        raise ConfigError(
            f"out_dir {out}: holds synth output of format {meta.get('format_version')} (this generator "
            f"writes format {FORMAT_VERSION}); delete the folder and generate again"
        )
    found = meta.get("arguments") if meta is not None and meta.get("format_version") == FORMAT_VERSION else None
    if found != args:
        what = "no synth output" if found is None else f"synth output made with {found}"
        raise ConfigError(f"out_dir {out}: not empty and holds {what}; choose an empty folder or delete it")
    try:
        with open(out / "factors.csv", newline="", encoding="utf-8") as f:
            missing = [r["path"] for r in csv.DictReader(f) if not (out / r["path"]).is_file()]
    except (OSError, KeyError):
        missing = ["factors.csv"]
    if missing:
        raise ConfigError(
            f"out_dir {out}: synth output is missing {len(missing)} files "
            f"(e.g. {missing[0]}); delete the folder and generate again"
        )
    return True


def ensure(out_dir, progress: bool = True, **kwargs) -> Path:
    """generate() for a folder the project owns (data/synthetic, data/synthetic-small): an output of an older
    generator format is deleted and written again instead of refused."""
    out = Path(out_dir)
    meta = _read_meta(out)
    if meta is not None and meta.get("format_version") != FORMAT_VERSION:
        import shutil

        print(f"{out}: synthetic data of format {meta.get('format_version')}; writing format {FORMAT_VERSION}")
        shutil.rmtree(out)
    return generate(out, progress=progress, **kwargs)


def generate(
    out_dir,
    per_class: int = PER_CLASS,
    size: int = 128,
    seed: int = 0,
    label_noise: float = 0.0,
    layout: str = "fi",
    shift: float = 0.0,
    progress: bool = True,
) -> Path:
    """Write the dataset and return out_dir.

    layout "fi": out_dir/<emotion>/<emotion>_<0000>.jpg, FI's folder per class.
    layout "artphoto": out_dir/<prefix>_<n>.jpg (n from 1, `sad` for sadness), ArtPhoto's flat folder.
    With probability `label_noise` an image is written under a uniformly chosen *other*
    class; factors.csv keeps both the written `label` and the `true_label`.
    Same arguments, same bytes; a folder already holding this exact output is left as is.
    """
    args = _check_args(per_class, size, seed, label_noise, layout, shift)
    out = Path(out_dir)
    if _existing_output(out, args):
        return out
    # Class folders appear as images are written: with heavy label noise and few images a class
    # can receive none, and an empty class folder is an error for the FI loader.
    out.mkdir(parents=True, exist_ok=True)

    counters = dict.fromkeys(CLASSES, 0)
    rows = []
    from emotionlib.utils import progress_bar

    with progress_bar(per_class * len(CLASSES), "synth", enabled=progress, unit="img") as bar:
        for ci, true in enumerate(CLASSES):
            for i in range(per_class):
                # Both draws are always made so that the noise level never changes later images.
                nrng = _noise_rng(seed, ci, i)
                flip, other = nrng.random() < label_noise, int(nrng.integers(len(CLASSES) - 1))
                label = CLASSES[other + (other >= ci)] if flip else true
                image, _, nuisance = render(CLASS_FACTORS[true], size, image_rng(seed, ci, i), shift)
                if layout == "fi":
                    rel = f"{label}/{label}_{counters[label]:04d}.jpg"
                else:
                    rel = f"{ARTPHOTO_PREFIX[label]}_{counters[label] + 1}.jpg"
                counters[label] += 1
                # Encode in memory: PIL's JPEG with fixed quality and no EXIF is byte-deterministic.
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=JPEG_QUALITY)
                with atomic_path(out / rel) as tmp:
                    tmp.write_bytes(buf.getvalue())
                rows.append({"path": rel, "label": label, "true_label": true, **CLASS_FACTORS[true], **nuisance})
                bar.update()

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "factors.csv", buf.getvalue())
    # The metadata is written last: its presence marks a complete output.
    write_json(
        out / "synth_meta.json",
        {
            "format_version": FORMAT_VERSION,
            "generator": "emotionlib.synth",
            "description": "Synthetic 8-class emotion images: each class is one combination of three "
            "binary cues (colour, texture, shape); any one cue separates only its own "
            "two groups of four classes, so a model needs all three levels (Sec. 1, Fig. 1).",
            "classes": list(CLASSES),
            "factors": {f: list(v) for f, v in FACTORS.items()},
            "class_factors": CLASS_FACTORS,
            "class_factors_note": "arbitrary: class i in Fig. 6 order gets the bits of i as "
            "(colour, texture, shape), 0 = first level",
            "cues": CUES,
            "nuisances": NUISANCES,
            "arguments": args,
            "jpeg_quality": JPEG_QUALITY,
            "rng": "image i of class c is rendered with numpy.random.default_rng([seed, c, i]); "
            "its label noise uses default_rng([seed, c, i, 1])",
            "n_images": len(rows),
            "n_noisy_labels": sum(r["label"] != r["true_label"] for r in rows),
        },
    )
    return out
