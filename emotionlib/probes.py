"""What the branches see: receptive fields of top activations (Fig. 3) and linear probes of the levels (Sec. 1).

Fig. 3 shows, for three channels each of pool1, pool2 and pool3, the image patches inside the channel's
receptive field where it fires most (Zhou et al. 2014): patches grow and become more semantic with depth. Here
the patch of unit (row, col) is its *theoretical* receptive field, computed from the layer geometry
(`model.receptive_field`), clipped at the image border.

The paper's premise is that the branches carry different levels of cues - colour (low), texture (mid), objects
(high) - and the Bi-GRU combines them. On the built-in synthetic data those cues are known for every image
(`factors.csv`), so the premise can be measured: a linear probe (logistic regression) on each branch's features
FC_1..FC_4 and FC_5 says how well that branch predicts each factor.

A probe's accuracy alone does not say what training added: random convolutions already carry much of the texture
and shape information, and a colour histogram of the pixels reads the palette. `controlled_probes` therefore
probes, per seed, the trained CNN beside its own untrained initialisation (`control_cnn`) and two pixel baselines;
`probe_gain` is the trained-minus-control difference with a t-interval over seeds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .ablation import extract_features, load_cnn
from .config import Config
from .data import DatasetIndex, EmotionDataset, five_crop_boxes
from .errors import ConfigError, DataError
from .experiment import mean_interval
from .model import ModelConfig, UnifiedCNNRNN, receptive_field
from .data import make_loader
from .evaluate import CENTRE_CROP
from .utils import derive_seed, relative_path, resolve_device

LAYERS = ("pool1", "pool2", "pool3")  # Fig. 3
FACTORS = ("colour", "texture", "shape")  # emotionlib.synth: low, mid and high level


# ----------------------------------------------------------------------------- receptive fields (Fig. 3)


def patch_box(cfg: ModelConfig, layer: str, row: int, col: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in input pixels of the receptive field of unit (row, col) of `layer`, clipped
    at the border of a height x width input. Right and bottom are exclusive (PIL's box convention)."""
    size, jump, start = receptive_field(cfg, layer)

    def span(i: int, limit: int) -> tuple[int, int]:
        centre = start + i * jump  # continuous coordinates: pixel k covers [k, k + 1)
        return max(0, math.floor(centre - size / 2)), min(limit, math.ceil(centre + size / 2))

    top, bottom = span(row, height)
    left, right = span(col, width)
    return left, top, right, bottom


@dataclass
class ChannelTop:
    """One channel's strongest images: for each, the unit where the channel peaks and its activation."""

    layer: str
    channel: int
    score: float  # the selection score (see choose_channels)
    images: list[int] = field(default_factory=list)  # indices into the split
    rows: list[int] = field(default_factory=list)
    cols: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


@torch.inference_mode()
def layer_maxima(
    model: UnifiedCNNRNN,
    part: DatasetIndex,
    cfg: Config,
    layers: Sequence[str] = LAYERS,
    device: str | torch.device | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For every image's centre crop and every channel of each layer: the peak activation and where it is.
    Returns layer -> (values, rows, cols), each (N, channels)."""
    dev = resolve_device(cfg.train.device) if device is None else torch.device(device)
    model = model.to(dev).eval()
    depth = max(int(layer[-1]) for layer in layers)
    out: dict[str, list] = {layer: [] for layer in layers}
    for x, _, _ in make_loader(part, part.classes, cfg, train=False):
        maps = model.trunk(x[:, CENTRE_CROP].to(dev), depth)
        for layer in layers:
            m = maps[layer].float()
            b, c, h, w = m.shape
            val, flat = m.reshape(b, c, h * w).max(dim=2)
            out[layer].append((val.cpu(), (flat // w).cpu(), (flat % w).cpu()))
    return {layer: tuple(torch.cat([t[k] for t in v]).numpy() for k in range(3)) for layer, v in out.items()}


def choose_channels(values: np.ndarray, n: int = 3, top_k: int = 6, rule: str = "selective") -> list[tuple[int, float]]:
    """Pick n channels from (N, channels) peak activations; returns (channel, score), best first.

    "selective": how far the channel's top_k images stand above its typical image, in standard deviations
    (a channel that fires for a few images, like Fig. 3's); "mean": the highest mean peak activation.
    Channels that never fire are skipped.
    """
    if rule not in ("selective", "mean"):
        raise ConfigError(f"rule={rule!r}: use 'selective' or 'mean'")
    alive = values.max(axis=0) > 0
    if rule == "mean":
        score = values.mean(axis=0)
    else:
        top = -np.sort(-values, axis=0)[:top_k].mean(axis=0)
        score = (top - values.mean(axis=0)) / (values.std(axis=0) + 1e-6)
    score = np.where(alive, score, -np.inf)
    order = [int(c) for c in np.argsort(-score, kind="stable") if np.isfinite(score[c])]
    return [(c, float(score[c])) for c in order[:n]]


def top_patches(
    model: UnifiedCNNRNN,
    part: DatasetIndex,
    cfg: Config,
    layers: Sequence[str] = LAYERS,
    n_channels: int = 3,
    top_k: int = 6,
    rule: str = "selective",
    device: str | torch.device | None = None,
) -> list[ChannelTop]:
    """Fig. 3's selection: per layer, n_channels channels and their top_k images (one patch per image, at the
    unit where the channel peaks), over the centre crops of `part`."""
    if not part.samples:
        raise DataError(f"{part.root}: the split is empty; there is nothing to rank")
    out = []
    for layer, (vals, rows, cols) in layer_maxima(model, part, cfg, layers, device).items():
        for c, score in choose_channels(vals, n_channels, top_k, rule):
            best = np.argsort(-vals[:, c], kind="stable")[:top_k]
            out.append(
                ChannelTop(
                    layer,
                    c,
                    score,
                    [int(i) for i in best],
                    [int(rows[i, c]) for i in best],
                    [int(cols[i, c]) for i in best],
                    [float(vals[i, c]) for i in best],
                )
            )
    return out


def _centre_crops(samples, part: DatasetIndex, cfg: Config):
    """The centre crop (FiveCrop's fifth box, Sec. 4.1) of each sample as an (H, W, 3) uint8 array: the pixels
    extract_features(..., "center") feeds the CNN, before normalisation."""
    ds = EmotionDataset(
        samples,
        part.class_to_idx,
        resize=cfg.data.resize,
        crop=cfg.data.crop,
        train=False,
        max_pixels=cfg.data.max_pixels,
        cache=False,
    )
    for i in range(len(ds)):
        x = ds.resized(i)
        left, top, right, bottom = five_crop_boxes(x.shape[2], x.shape[1], cfg.data.crop)[CENTRE_CROP]
        yield x[:, top:bottom, left:right].permute(1, 2, 0).numpy()


def centre_crop(part: DatasetIndex, i: int, cfg: Config) -> np.ndarray:
    """The centre crop the network saw for image i, as an (H, W, 3) uint8 array."""
    return next(_centre_crops([part.samples[i]], part, cfg))


# ----------------------------------------------------------------------------- linear probes of the factors


def read_factors(data_dir: str | os.PathLike) -> pd.DataFrame | None:
    """The synthetic data's per-image factors (emotionlib.synth), indexed by path; None when the folder has no
    factors.csv (real data such as FI: there is nothing to probe)."""
    path = Path(data_dir) / "factors.csv"
    if not path.exists():
        return None
    df = pd.read_csv(path)
    missing = [c for c in ("path", *FACTORS) if c not in df.columns]
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(missing)}; regenerate it with `emotionlib synth`")
    return df.set_index("path")


def match_factors(factors: pd.DataFrame, paths: Sequence[str]) -> pd.DataFrame:
    """The factor rows of `paths` (relative to the dataset root), in that order."""
    missing = [p for p in paths if p not in factors.index]
    if missing:
        raise DataError(
            f"factors.csv has no row for {len(missing)} image(s), e.g. {missing[0]}; it belongs to "
            "another dataset - regenerate the data or pass the right data_dir"
        )
    return factors.loc[list(paths)]


def linear_probe(X_train: np.ndarray, y_train, X_test: np.ndarray, y_test, C: float = 1.0) -> float:
    """Test accuracy of a standardised logistic regression fitted on the training features (NaN when the
    training labels hold a single level, which leaves nothing to fit)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2 or len(y_test) == 0:
        return float("nan")
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    clf.fit(np.asarray(X_train, dtype=np.float64), np.asarray(y_train))
    return float(clf.score(np.asarray(X_test, dtype=np.float64), np.asarray(y_test)))


def branch_label(key: str, n_side: int = 4) -> str:
    """branch1 -> "FC_1 (pool1)", main -> "FC_5 (main)" (the paper's names, Fig. 2)."""
    if key == "main":
        return f"FC_{n_side + 1} (main)"
    i = key[len("branch") :]
    return f"FC_{i} ({'conv1' if i == '0' else 'pool' + i})"


def probe_branches(train, test, factors: pd.DataFrame, names: Sequence[str] = FACTORS, C: float = 1.0) -> pd.DataFrame:
    """Branches x factors test accuracy of linear probes. `train`/`test` are ablation.Features (their paths
    select the factor rows); each branch's V is averaged over the feature views."""
    ft, fs = match_factors(factors, train.paths), match_factors(factors, test.paths)
    n_side = sum(k != "main" for k in train.keys)
    rows = {}
    for key in train.keys:
        xtr, xte = train.key_features(key), test.key_features(key)
        rows[branch_label(key, n_side)] = {
            f: linear_probe(xtr, ft[f].to_numpy(), xte, fs[f].to_numpy(), C) for f in names
        }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "branch"
    return df


def majority_rate(factors: pd.DataFrame, paths: Sequence[str], names: Sequence[str] = FACTORS) -> pd.Series:
    """The accuracy of always guessing the most frequent level: the probe's chance line (0.5 when balanced)."""
    f = match_factors(factors, paths)
    return pd.Series({n: float(f[n].value_counts(normalize=True).max()) for n in names}, name="majority")


# ----------------------------------------------------------------------------- controls: untrained CNN, pixels

SOURCES = ("trained", "random init")  # the CNN sources of controlled_probes, per seed
MAJORITY = "majority"
NO_LEVEL = "-"  # the level of rows that come from no branch (pixel baselines, majority)


def _paths(part: DatasetIndex) -> list[str]:
    return [relative_path(s.path, part.root) for s in part.samples]


def control_cnn(cfg: Config) -> UnifiedCNNRNN:
    """The untrained network of `cfg`'s architecture: exactly the initial draw fit() starts from (seeded by
    derive_seed(cfg.train.seed, "init")), in eval mode, its batch norms at their initial statistics (mean 0,
    variance 1). The caller's random stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.train.seed, "init"))
        return UnifiedCNNRNN(cfg.model).eval()


def _chroma_histogram(crop: np.ndarray, bins: int) -> np.ndarray:
    from PIL import Image

    ycc = np.asarray(Image.fromarray(crop).convert("YCbCr"))
    h, _, _ = np.histogram2d(ycc[..., 1].ravel(), ycc[..., 2].ravel(), bins=bins, range=[[0, 256], [0, 256]])
    return (h / h.sum()).ravel()


def _grey_thumbnail(crop: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    grey = Image.fromarray(crop).convert("L").resize((size, size), Image.BOX)  # box: the mean of each cell
    return np.asarray(grey, dtype=np.float64).ravel() / 255


#: kind -> (feature of one uint8 centre crop, its size parameter); the source name is "pixels: KIND"
PIXEL_BASELINES = {"colour histogram": (_chroma_histogram, 8), "grey thumbnail": (_grey_thumbnail, 8)}


def pixel_features(
    part: DatasetIndex, cfg: Config, kind: str = "colour histogram", size: int | None = None
) -> np.ndarray:
    """A pixel baseline for the probes, one row per image of `part`, from the same centre crop the CNN features
    use (the uint8 pixels before the ImageNet normalisation):

    - "colour histogram": the joint histogram of chroma (Cb, Cr of JPEG's YCbCr) in size x size bins
      (default 8 x 8 = 64), as fractions of the crop's pixels. Chroma, not RGB: it leaves out luma, so the
      baseline reads the palette (the low-level cue of Sec. 1) and neither lighting nor texture.
    - "grey thumbnail": the luma averaged over size x size boxes (default 8 x 8), in [0, 1]: coarse layout
      with no colour, the cheapest stand-in for shape.
    """
    if kind not in PIXEL_BASELINES:
        raise ConfigError(f"kind={kind!r}: choose one of {', '.join(PIXEL_BASELINES)}")
    fn, default = PIXEL_BASELINES[kind]
    n = default if size is None else int(size)
    rows = [fn(crop, n) for crop in _centre_crops(part.samples, part, cfg)]
    return np.stack(rows) if rows else np.zeros((0, n * n))


def _tidy(df: pd.DataFrame, source: str, seed) -> list[dict]:
    return [
        {"source": source, "level": level, "cue": cue, "seed": seed, "accuracy": float(df.loc[level, cue])}
        for level in df.index
        for cue in df.columns
    ]


def _feature_cache(cache, seed: int, source: str, split: str) -> Path | None:
    return None if cache is None else Path(cache) / f"seed-{seed}" / f"{source.replace(' ', '-')}-{split}.pt"


def controlled_probes(
    checkpoints: Iterable[str | os.PathLike],
    parts: Mapping[str, DatasetIndex],
    factors: pd.DataFrame,
    cache: str | os.PathLike | None = None,
    names: Sequence[str] = FACTORS,
    C: float = 1.0,
    pixels: Sequence[str] = tuple(PIXEL_BASELINES),
    device: str | torch.device | None = None,
) -> pd.DataFrame:
    """The probe table with its controls, tidy: one row per (source, level, cue, seed) with the test accuracy.

    `checkpoints`: one CNN per seed (a run's stage-main.pt: the multi-stage CNN of Sec. 3.2); the seed is its
    cfg.train.seed. For each, probe_branches on the centre-crop features of the trained CNN (source "trained")
    and of its untrained initialisation control_cnn(cfg) ("random init"); once, the pixel baselines
    ("pixels: colour histogram", ...) and the majority rate ("majority"), whose level is "-" and seed <NA>.
    Probes fit on parts["train"] and score on parts["test"]. `cache`: a folder for the CNN features
    (cache/seed-K/SOURCE-SPLIT.pt, reused while the weights and images are the same).
    """
    rows, seeds, geometry = [], set(), set()
    for path in checkpoints:
        model, cfg = load_cnn(path)
        seed = cfg.train.seed
        if seed in seeds:
            raise ConfigError(f"{path}: a second checkpoint of seed {seed}; pass one CNN per seed")
        seeds.add(seed)
        geometry.add((cfg.data.resize, cfg.data.crop))
        for source, net in zip(SOURCES, (model, control_cnn(cfg))):
            f = {
                s: extract_features(
                    net, parts[s], cfg, "center", cache=_feature_cache(cache, seed, source, s), device=device
                )
                for s in ("train", "test")
            }
            rows += _tidy(probe_branches(f["train"], f["test"], factors, names, C), source, seed)
    if not seeds:
        raise ConfigError("no checkpoints to probe: train a CNN first (fit(..., until='main'))")
    if len(geometry) > 1:
        raise ConfigError(
            f"the checkpoints crop differently ({sorted(geometry)}): the pixel baseline needs one crop geometry"
        )
    ft, fs = (match_factors(factors, _paths(parts[s])) for s in ("train", "test"))
    for kind in pixels:
        xtr, xte = pixel_features(parts["train"], cfg, kind), pixel_features(parts["test"], cfg, kind)
        rows += [
            {
                "source": f"pixels: {kind}",
                "level": NO_LEVEL,
                "cue": n,
                "seed": pd.NA,
                "accuracy": linear_probe(xtr, ft[n].to_numpy(), xte, fs[n].to_numpy(), C),
            }
            for n in names
        ]
    rows += [
        {"source": MAJORITY, "level": NO_LEVEL, "cue": n, "seed": pd.NA, "accuracy": float(a)}
        for n, a in majority_rate(factors, _paths(parts["test"]), names).items()
    ]
    df = pd.DataFrame(rows, columns=["source", "level", "cue", "seed", "accuracy"])
    return df.astype({"seed": "Int64"})


def probe_gain(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """What training added, per level and cue: gain = trained - random init, paired by seed, averaged over seeds,
    with a `confidence` t-interval over the seeds (NaN with one seed). Columns: level, cue, trained,
    random init (both means over seeds), gain, gain_low, gain_high, seeds."""
    key = ["level", "cue", "seed"]
    trained = table[table.source == SOURCES[0]].set_index(key)["accuracy"]
    control = table[table.source == SOURCES[1]].set_index(key)["accuracy"]
    missing = trained.index.difference(control.index)
    if len(missing):
        raise DataError(f"no random-init control for {len(missing)} trained row(s), e.g. {missing[0]}")
    paired = pd.DataFrame({SOURCES[0]: trained, SOURCES[1]: control.reindex(trained.index)}).reset_index()
    paired["gain"] = paired[SOURCES[0]] - paired[SOURCES[1]]
    rows = []
    for (level, cue), g in paired.groupby(["level", "cue"], sort=False):
        mean, _, low, high = mean_interval(g["gain"], confidence)
        rows.append(
            {
                "level": level,
                "cue": cue,
                SOURCES[0]: g[SOURCES[0]].mean(),
                SOURCES[1]: g[SOURCES[1]].mean(),
                "gain": mean,
                "gain_low": low,
                "gain_high": high,
                "seeds": len(g),
            }
        )
    return pd.DataFrame(rows)


def pivot_probes(table: pd.DataFrame) -> pd.DataFrame:
    """Levels x (cue, source) mean accuracy over seeds: each cue's trained, random init, pixel and majority
    columns side by side (the baselines belong to no level and repeat down their column)."""
    mean = table.groupby(["source", "level", "cue"], sort=False)["accuracy"].mean()
    levels = [lv for lv in table["level"].unique() if lv != NO_LEVEL]
    cols = pd.MultiIndex.from_product(
        [list(table["cue"].unique()), list(table["source"].unique())], names=["cue", "source"]
    )
    out = pd.DataFrame(np.nan, index=pd.Index(levels, name="level"), columns=cols)
    for (source, level, cue), v in mean.items():
        out.loc[levels if level == NO_LEVEL else level, (cue, source)] = v
    return out


# The probes' plots live in figures.py; notebook 06 reads them from here.
from .figures import plot_controlled_probes, plot_probes, plot_top_patches  # noqa: E402

__all__ = [
    "LAYERS",
    "FACTORS",
    "patch_box",
    "ChannelTop",
    "layer_maxima",
    "choose_channels",
    "top_patches",
    "centre_crop",
    "plot_top_patches",
    "read_factors",
    "match_factors",
    "linear_probe",
    "branch_label",
    "probe_branches",
    "majority_rate",
    "plot_probes",
    "SOURCES",
    "MAJORITY",
    "NO_LEVEL",
    "control_cnn",
    "PIXEL_BASELINES",
    "pixel_features",
    "controlled_probes",
    "probe_gain",
    "pivot_probes",
    "plot_controlled_probes",
]
