"""Interactive exploration of a finished run (notebook 09): pick or compose one image, see what each branch sees.

For one image: its five crops (Sec. 4.1), the class probabilities of each branch's own classifier (Sec. 3.2) and of
the variant's output (the Bi-GRU, Sec. 3.3), averaged over the crops as the evaluation does, and for a pooling
layer and channel the receptive-field box of its strongest unit on the centre crop (Fig. 3, notebook 06). On the
built-in data an image can also be composed from its three cues and a nuisance seed with the generator itself
(`synth.render`). The notebook holds only the widgets; everything they show comes from here.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import synth
from .ablation import top_confusions
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetIndex,
    five_crop_boxes,
    load_image,
    read_split,
    resize_shorter,
    to_uint8_tensor,
)
from .errors import ConfigError
from .probes import branch_label, patch_box
from .train import load_run
from .utils import read_json

POOLS = ("pool1", "pool2", "pool3", "pool4")


@dataclass
class Explorer:
    """A finished run opened for exploration: its trained model, configuration, classes and test split."""

    model: torch.nn.Module
    cfg: object
    classes: list[str]
    test: DatasetIndex
    confusion: np.ndarray
    predictions: dict[str, str]  # test image path (relative) -> predicted class

    @classmethod
    def open(cls, train_dir: str | os.PathLike) -> "Explorer":
        train_dir = Path(train_dir)
        model, cfg, classes = load_run(train_dir, "cpu")
        root = Path(read_json(train_dir / "run.json")["data_root"])
        test = read_split(train_dir / "split.csv", root=root).subset("test")
        metrics = read_json(train_dir / "metrics.json")
        with open(train_dir / "predictions.csv", newline="", encoding="utf-8") as f:
            preds = {r["path"]: r["pred"] for r in csv.DictReader(f)}
        return cls(model, cfg, classes, test, np.array(metrics["confusion"]), preds)

    def channels(self, layer: str) -> int:
        """How many channels `layer` has (the range of the channel control)."""
        if layer not in POOLS:
            raise ConfigError(f"layer={layer!r}: choose one of {', '.join(POOLS)}")
        return self.model.cfg.stage_channels()[int(layer[-1]) - 1]

    # --- choosing an image

    def of_class(self, label: str) -> list[int]:
        """Indices into the test split of the images labelled `label`."""
        if label not in self.classes:
            raise ConfigError(f"class {label!r}: choose one of {', '.join(self.classes)}")
        return [i for i, s in enumerate(self.test.samples) if s.label == label]

    def confused_pairs(self, k: int = 5) -> list[tuple[str, str, float]]:
        """Fig. 6's k largest confusions of this run (true class, predicted class, share of the true class)."""
        return top_confusions(self.confusion, self.classes, k)

    def confused_images(self, true: str, pred: str) -> list[int]:
        """Test images of class `true` the run predicted as `pred` (from train/predictions.csv)."""
        rel = {i: Path(s.path).relative_to(self.test.root).as_posix() for i, s in enumerate(self.test.samples)}
        return [i for i in self.of_class(true) if self.predictions.get(rel[i]) == pred]

    def image(self, i: int) -> Image.Image:
        if not 0 <= i < len(self.test.samples):
            raise ConfigError(
                f"index {i}: the test split has {len(self.test.samples)} images (0-{len(self.test.samples) - 1})"
            )
        return load_image(self.test.samples[i].path, self.cfg.data.max_pixels)

    # --- what the network sees

    def analyse(self, image: Image.Image, layer: str = "pool3", channel: int = 0) -> dict:
        return analyse(self.model, self.cfg, self.classes, image, layer, channel)


def compose(
    factors: dict[str, str], nuisance_seed: int = 0, shift: float = 0.0, size: int | None = None
) -> Image.Image:
    """An image of the built-in data's kind, rendered by its own generator from the three cues; `nuisance_seed`
    draws position, scale, hues within the palette, clutter and lighting, `shift` moves their distribution."""
    size = synth.BUILTIN["size"] if size is None else size
    image, _, _ = synth.render(factors, size, np.random.default_rng([int(nuisance_seed), 99]), shift)
    return image


def five_crops(image: Image.Image, cfg) -> tuple[torch.Tensor, np.ndarray]:
    """The evaluation's input for one image (Sec. 4.1): resized so the shorter side is data.resize, cut at the four
    corners and the centre. Returns (normalised crops (5, 3, crop, crop), the same crops as (5, crop, crop, 3) uint8)."""
    x = to_uint8_tensor(resize_shorter(image.convert("RGB"), cfg.data.resize))
    boxes = five_crop_boxes(x.shape[2], x.shape[1], cfg.data.crop)
    raw = torch.stack([x[:, t:b, l:r] for l, t, r, b in boxes])
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (raw.float() / 255 - mean) / std, raw.permute(0, 2, 3, 1).numpy()


@torch.inference_mode()
def analyse(model, cfg, classes: list[str], image: Image.Image, layer: str = "pool3", channel: int = 0) -> dict:
    """Crops, per-branch and final probabilities (softmax averaged over the five crops, as predict_all), and the
    receptive-field box (left, top, right, bottom) on the centre crop of `layer`/`channel`'s strongest unit."""
    model = model.eval()
    x, crops = five_crops(image, cfg)
    feats = model.extract(x)
    probs = {
        branch_label(k, len(model.branches)): torch.softmax(lg.float(), 1).mean(0).numpy()
        for k, (_, lg) in feats.items()
    }
    probs[f"{model.cfg.variant} (output)"] = torch.softmax(model.fuse(feats).float(), 1).mean(0).numpy()
    if layer not in POOLS:
        raise ConfigError(f"layer={layer!r}: choose one of {', '.join(POOLS)}")
    m = model.trunk(x[4:5], int(layer[-1]))[layer][0].float()  # the centre crop, FiveCrop's fifth
    if not 0 <= channel < m.shape[0]:
        raise ConfigError(f"channel={channel}: {layer} has {m.shape[0]} channels (0-{m.shape[0] - 1})")
    flat = int(m[channel].argmax())
    row, col = divmod(flat, m.shape[2])
    box = patch_box(model.cfg, layer, row, col, *crops.shape[1:3])
    return {
        "classes": list(classes),
        "crops": crops,
        "probs": probs,
        "layer": layer,
        "channel": channel,
        "unit": (row, col),
        "activation": float(m[channel, row, col]),
        "box": box,
    }


def probability_table(result: dict) -> pd.DataFrame:
    """Rows: each branch's classifier and the output; columns: the classes, then the predicted class."""
    df = pd.DataFrame(result["probs"], index=result["classes"]).T
    df["prediction"] = df[result["classes"]].idxmax(axis=1)
    return df


def describe(result: dict) -> str:
    """The plain-text summary the notebook prints (and the browser test watches)."""
    out = list(result["probs"])[-1]
    p = result["probs"][out]
    c = int(p.argmax())
    return (
        f"prediction: {result['classes'][c]} ({p[c]:.2f}) | {result['layer']} channel {result['channel']}: "
        f"strongest unit {result['unit']}, box {result['box']}"
    )


def plot(result: dict, title: str = ""):
    """The five crops (the centre one with the receptive-field box) beside the probabilities of every classifier."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig = plt.figure(figsize=(9, 6.5))
    grid = fig.add_gridspec(2, 5, height_ratios=[1, 1.6])
    names = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")
    for k in range(5):
        ax = fig.add_subplot(grid[0, k])
        ax.imshow(result["crops"][k], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_title(names[k], fontsize=8)
    l, t, r, b = result["box"]
    ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, edgecolor="yellow", linewidth=2))
    ax.set_xlabel(f"{result['layer']} ch {result['channel']}", fontsize=8)
    ax = fig.add_subplot(grid[1, :])
    table = probability_table(result)[result["classes"]]
    table.T.plot.barh(ax=ax, width=0.85, legend=False)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability (mean over the five crops)")
    ax.legend(table.index, fontsize=7, loc="lower right", ncol=2)
    fig.suptitle(title or describe(result), fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["Explorer", "compose", "five_crops", "analyse", "probability_table", "describe", "plot", "POOLS"]
