"""What the branches see: receptive fields of top activations (Fig. 3) and linear probes of the levels (Sec. 1).

Fig. 3 shows, for three channels each of pool1, pool2 and pool3, the image patches inside the channel's
receptive field where it fires most (Zhou et al. 2014): patches grow and become more semantic with depth. Here
the patch of unit (row, col) is its *theoretical* receptive field, computed from the layer geometry
(`model.receptive_field`), clipped at the image border.

The paper's premise is that the branches carry different levels of cues - colour (low), texture (mid), objects
(high) - and the Bi-GRU combines them. On the built-in synthetic data those cues are known for every image
(`factors.csv`), so the premise can be measured: a linear probe (logistic regression) on each branch's features
FC_1..FC_4 and FC_5 says how well that branch predicts each factor.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .config import Config
from .data import DatasetIndex, EmotionDataset, five_crop_boxes
from .errors import ConfigError, DataError
from .model import ModelConfig, UnifiedCNNRNN, receptive_field
from .train import make_loader
from .utils import resolve_device

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
def layer_maxima(model: UnifiedCNNRNN, part: DatasetIndex, cfg: Config, layers: Sequence[str] = LAYERS,
                 device: str | torch.device | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For every image's centre crop and every channel of each layer: the peak activation and where it is.
    Returns layer -> (values, rows, cols), each (N, channels)."""
    dev = resolve_device(cfg.train.device) if device is None else torch.device(device)
    model = model.to(dev).eval()
    depth = max(int(layer[-1]) for layer in layers)
    out: dict[str, list] = {layer: [] for layer in layers}
    for x, _, _ in make_loader(part, part.classes, cfg, train=False):
        maps = model.trunk(x[:, 4].to(dev), depth)  # the centre crop
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


def top_patches(model: UnifiedCNNRNN, part: DatasetIndex, cfg: Config, layers: Sequence[str] = LAYERS,
                n_channels: int = 3, top_k: int = 6, rule: str = "selective",
                device: str | torch.device | None = None) -> list[ChannelTop]:
    """Fig. 3's selection: per layer, n_channels channels and their top_k images (one patch per image, at the
    unit where the channel peaks), over the centre crops of `part`."""
    if not part.samples:
        raise DataError(f"{part.root}: the split is empty; there is nothing to rank")
    out = []
    for layer, (vals, rows, cols) in layer_maxima(model, part, cfg, layers, device).items():
        for c, score in choose_channels(vals, n_channels, top_k, rule):
            best = np.argsort(-vals[:, c], kind="stable")[:top_k]
            out.append(ChannelTop(layer, c, score, [int(i) for i in best], [int(rows[i, c]) for i in best],
                                  [int(cols[i, c]) for i in best], [float(vals[i, c]) for i in best]))
    return out


def centre_crop(part: DatasetIndex, i: int, cfg: Config) -> np.ndarray:
    """The centre crop the network saw for image i, as an (H, W, 3) uint8 array."""
    ds = EmotionDataset([part.samples[i]], part.class_to_idx, resize=cfg.data.resize, crop=cfg.data.crop,
                        train=False, max_pixels=cfg.data.max_pixels, cache=False)
    x = ds.resized(0)
    left, top, right, bottom = five_crop_boxes(x.shape[2], x.shape[1], cfg.data.crop)[4]
    return x[:, top:bottom, left:right].permute(1, 2, 0).numpy()


def plot_top_patches(tops: Sequence[ChannelTop], part: DatasetIndex, cfg: Config, cell: float = 1.1):
    """Fig. 3: one row per (layer, channel), one column per top patch, cut at the theoretical receptive field."""
    import matplotlib.pyplot as plt

    k = max(len(t.images) for t in tops)
    fig, axes = plt.subplots(len(tops), k, figsize=(cell * k + 1.6, cell * len(tops) + 0.4), squeeze=False)
    crops: dict[int, np.ndarray] = {}
    for r, t in enumerate(tops):
        size = receptive_field(cfg.model, t.layer)[0]
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j >= len(t.images):
                ax.axis("off")
                continue
            i = t.images[j]
            img = crops.setdefault(i, centre_crop(part, i, cfg))
            left, top, right, bottom = patch_box(cfg.model, t.layer, t.rows[j], t.cols[j], *img.shape[:2])
            ax.imshow(img[top:bottom, left:right], interpolation="nearest")
            ax.set_title(f"{t.values[j]:.2f}", fontsize=7, pad=2)
        axes[r][0].set_ylabel(f"{t.layer} ch {t.channel}\nRF {size} px", fontsize=8, rotation=0, ha="right",
                              va="center")
    fig.suptitle("top activations inside each unit's theoretical receptive field (centre crops, test split)",
                 fontsize=10)
    fig.tight_layout()
    return fig


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
        raise DataError(f"factors.csv has no row for {len(missing)} image(s), e.g. {missing[0]}; it belongs to "
                        "another dataset - regenerate the data or pass the right data_dir")
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
    i = key[len("branch"):]
    return f"FC_{i} ({'conv1' if i == '0' else 'pool' + i})"


def probe_branches(train, test, factors: pd.DataFrame, names: Sequence[str] = FACTORS, C: float = 1.0) -> pd.DataFrame:
    """Branches x factors test accuracy of linear probes. `train`/`test` are ablation.Features (their paths
    select the factor rows); each branch's V is averaged over the feature views."""
    ft, fs = match_factors(factors, train.paths), match_factors(factors, test.paths)
    n_side = sum(k != "main" for k in train.keys)
    rows = {}
    for key in train.keys:
        xtr, xte = train.key_features(key), test.key_features(key)
        rows[branch_label(key, n_side)] = {f: linear_probe(xtr, ft[f].to_numpy(), xte, fs[f].to_numpy(), C)
                                           for f in names}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "branch"
    return df


def majority_rate(factors: pd.DataFrame, paths: Sequence[str], names: Sequence[str] = FACTORS) -> pd.Series:
    """The accuracy of always guessing the most frequent level: the probe's chance line (0.5 when balanced)."""
    f = match_factors(factors, paths)
    return pd.Series({n: float(f[n].value_counts(normalize=True).max()) for n in names}, name="majority")


def plot_probes(df: pd.DataFrame, title: str = "linear probe accuracy (chance 0.5)"):
    """Heatmap of branches x factors, on a fixed 0.5 (chance) - 1.0 scale."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.4 * df.shape[1] + 2.6, 0.55 * df.shape[0] + 1.4))
    sns.heatmap(df.astype(float), vmin=0.5, vmax=1.0, cmap="viridis", annot=True, fmt=".2f", ax=ax,
                cbar_kws={"label": "test accuracy"})
    ax.set_xlabel("factor (synthetic data)")
    ax.set_ylabel("")
    ax.set_title(title)
    ax.tick_params(axis="y", labelrotation=0)
    fig.tight_layout()
    return fig


__all__ = ["LAYERS", "FACTORS", "patch_box", "ChannelTop", "layer_maxima", "choose_channels", "top_patches",
           "centre_crop", "plot_top_patches", "read_factors", "match_factors", "linear_probe", "branch_label",
           "probe_branches", "majority_rate", "plot_probes"]
