"""The baselines of Table 1 (Sec. 4.2), each a variant name `emotionlib train --variant` accepts.

    handcrafted-svm  a documented *subset* of the colour, texture and composition features of Machajdik &
                     Hanbury (2010) and Zhao et al. (2014) + a linear SVM (not their full systems)
    alexnet-svm      AlexNet fc7 features + a linear SVM (You et al. 2016)
    resnet101        ResNet-101 fine-tuned on the emotion data (He et al. 2016)

ImageNet weights are never downloaded: they load from a local file, either the one torchvision caches
(~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth, resnet101-63fe2227.pth, resnet101-cd907fc2.pth) or
any state dict passed as `weights`. Without one the metrics say plainly that the network started from random
initialisation and was trained on this data only, which is not the paper's baseline.

A baseline run folder holds what a unified CNN-RNN run holds (config.json, run.json, split.csv, skipped.csv,
summary.csv for the networks it trains, metrics.json, predictions.csv) but no network checkpoint: ResNet-101
and AlexNet weigh 170-240 MB each, and a baseline is for comparison, not for later use.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from torch import nn

from . import __version__
from .config import PROFILE_SETTINGS, Config, validate
from .data import DatasetIndex, load_image
from .errors import CheckpointError, ConfigError, RunFolderError
from .evaluate import accuracy, summarise_predictions
from .methods import BASELINES, TABLE1_BASELINE_ROW
from .paper import TABLE1
from .utils import progress_bar, read_json, resolve_device, write_json


#: The file names torchvision gives its ImageNet weights in its cache (torch.hub.get_dir()/checkpoints).
TORCHVISION_FILES = {
    "alexnet": ("alexnet-owt-7be5be79.pth",),
    "resnet101": ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth"),
}
ALEXNET_MIN_INPUT = 64  # below 63 px AlexNet's third pooling layer has nothing left to pool


# ----------------------------------------------------------------------------- hand-crafted features

FEATURE_SIZE = 128  # (ours) every image is resized to 128 x 128 before its features are computed
ITTEN_SECTORS = 12  # Itten's colour wheel
GLCM_LEVELS = 16
EDGE_THRESHOLD = 0.05  # (ours) Sobel magnitude / 8, in luma units of [0, 1] per pixel


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in [0, 1) (0 red, 1/3 green, 2/3 blue), saturation and value in [0, 1], for floats in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = mx - mn
    s = np.divide(d, mx, out=np.zeros_like(mx), where=mx > 0)
    h = np.zeros_like(mx)
    nz = d > 1e-12
    rmax = nz & (mx == r)
    gmax = nz & (mx == g) & ~rmax
    bmax = nz & ~rmax & ~gmax
    h[rmax] = ((g - b)[rmax] / d[rmax]) % 6
    h[gmax] = (b - r)[gmax] / d[gmax] + 2
    h[bmax] = (r - g)[bmax] / d[bmax] + 4
    return h / 6, s, mx


def glcm(q: np.ndarray, levels: int, dy: int, dx: int) -> np.ndarray:
    """Symmetric, normalised grey-level co-occurrence matrix of the pixel pairs (y, x), (y + dy, x + dx)."""
    h, w = q.shape
    y0, y1, x0, x1 = max(0, -dy), h - max(0, dy), max(0, -dx), w - max(0, dx)
    a, b = q[y0:y1, x0:x1], q[y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    m = np.bincount((a * levels + b).ravel(), minlength=levels * levels).reshape(levels, levels).astype(np.float64)
    m = m + m.T
    return m / m.sum()


def glcm_stats(p: np.ndarray) -> dict[str, float]:
    """Haralick's contrast, correlation, energy (angular second moment) and homogeneity of a GLCM."""
    i, j = np.indices(p.shape)
    mu = (i * p).sum()  # the matrix is symmetric: one mean and one variance for rows and columns
    var = (((i - mu) ** 2) * p).sum()
    return {
        "contrast": float(((i - j) ** 2 * p).sum()),
        "correlation": float(((i - mu) * (j - mu) * p).sum() / var) if var > 1e-12 else 1.0,
        "energy": float((p**2).sum()),
        "homogeneity": float((p / (1 + (i - j) ** 2)).sum()),
    }


def haar_details(a: np.ndarray, levels: int) -> list[np.ndarray]:
    """|LH| + |HL| + |HH| of an orthonormal Haar wavelet transform at levels 1..`levels` (finest first)."""
    out = []
    for _ in range(levels):
        a = a[: a.shape[0] // 2 * 2, : a.shape[1] // 2 * 2]
        a00, a01, a10, a11 = a[0::2, 0::2], a[0::2, 1::2], a[1::2, 0::2], a[1::2, 1::2]
        lh, hl, hh = (a00 + a01 - a10 - a11) / 2, (a00 - a01 + a10 - a11) / 2, (a00 - a01 - a10 + a11) / 2
        out.append(np.abs(lh) + np.abs(hl) + np.abs(hh))
        a = (a00 + a01 + a10 + a11) / 2
    return out


def _sobel(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.pad(y, 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:] - p[:-2, :-2] - 2 * p[1:-1, :-2] - p[2:, :-2]) / 8
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:] - p[:-2, :-2] - 2 * p[:-2, 1:-1] - p[:-2, 2:]) / 8
    return gx, gy


def _hue_vector(h: np.ndarray, s: np.ndarray) -> complex:
    """Saturation-weighted mean of the hues as unit vectors: grey pixels have no hue to vote with."""
    return complex((s * np.exp(2j * np.pi * h)).sum() / max(s.sum(), 1e-12))


def handcrafted_feature_dict(rgb: np.ndarray) -> dict[str, float]:
    """The features of one image (floats in [0, 1], H x W x 3), by name.

    Colour (Machajdik & Hanbury 2010, Sec. 4.1; Zhao et al. 2014's "contrast" and "variety"):
      saturation and brightness mean and std; circular hue mean (cos, sin) and concentration weighted by
      saturation; a saturation-weighted histogram over Itten's 12 hue sectors; colourfulness after Hasler &
      Suesstrunk (2003) in place of M&H's Earth mover's distance; Itten contrasts of light-dark, saturation
      and hue over a 4 x 4 block grid (M&H compute them over segments), and the warm and cool shares.
      Valdez & Mehrabian's pleasure/arousal/dominance are left out: linear in the two means, they add
      nothing to a linear SVM.
    Texture (M&H Sec. 4.2): GLCM contrast, correlation, energy, homogeneity of 16-level luma averaged over
      0/45/90/135 degrees, and their anisotropy (spread of the contrast over the directions); Haar wavelet
      energies of luma and saturation at three levels (M&H use Daubechies on H, S and V); Tamura contrast and
      a simplified Tamura directionality (the concentration of gradient orientations).
    Composition (M&H Sec. 4.3; Zhao's "balance" and "emphasis"): edge density, rule-of-thirds statistics of
      the inner third (hue, saturation, brightness), low depth of field (share of level-3 wavelet energy in
      the centre blocks, after Datta et al. 2006), left-right and top-bottom symmetry.
    Left out: segmentation-based, face/skin, Hough-line and SIFT features, and Zhao's harmony, gradation and
    movement.
    """
    rgb = rgb.astype(np.float64)
    h, s, v = rgb_to_hsv(rgb)
    y = rgb @ np.array([0.299, 0.587, 0.114])
    f: dict[str, float] = {}
    # colour
    f.update(saturation_mean=s.mean(), saturation_std=s.std(), brightness_mean=v.mean(), brightness_std=v.std())
    z = _hue_vector(h, s)
    f.update(hue_cos=z.real, hue_sin=z.imag, hue_concentration=abs(z))
    sector = np.floor(h * ITTEN_SECTORS).astype(int) % ITTEN_SECTORS
    hist = np.bincount(sector.ravel(), weights=s.ravel(), minlength=ITTEN_SECTORS) / max(s.sum(), 1e-12)
    f.update({f"hue_sector_{k:02d}": hist[k] for k in range(ITTEN_SECTORS)})
    rg, yb = rgb[..., 0] - rgb[..., 1], 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    f["colourfulness"] = math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean())
    blocks = [
        (slice(i * y.shape[0] // 4, (i + 1) * y.shape[0] // 4), slice(j * y.shape[1] // 4, (j + 1) * y.shape[1] // 4))
        for i in range(4)
        for j in range(4)
    ]
    zb = np.array([_hue_vector(h[b], s[b]) * s[b].mean() for b in blocks])
    f.update(
        itten_light_dark=np.std([v[b].mean() for b in blocks]),
        itten_saturation=np.std([s[b].mean() for b in blocks]),
        itten_hue=1 - abs(zb.sum()) / max(np.abs(zb).sum(), 1e-12),
    )
    deg = h * 360
    f.update(
        warm_share=(s * ((deg < 90) | (deg >= 330))).sum() / max(s.sum(), 1e-12),  # red to yellow
        cool_share=(s * ((deg >= 150) & (deg < 270))).sum() / max(s.sum(), 1e-12),
    )  # cyan to blue
    # texture
    q = np.minimum((y * GLCM_LEVELS).astype(int), GLCM_LEVELS - 1)
    per_dir = [glcm_stats(glcm(q, GLCM_LEVELS, dy, dx)) for dy, dx in ((0, 1), (-1, 1), (-1, 0), (-1, -1))]
    for k in per_dir[0]:
        f[f"glcm_{k}"] = np.mean([d[k] for d in per_dir])
    c = [d["contrast"] for d in per_dir]
    f["glcm_anisotropy"] = (max(c) - min(c)) / max(max(c) + min(c), 1e-12)
    for name, plane in (("luma", y), ("saturation", s)):
        for level, d in enumerate(haar_details(plane, 3), start=1):
            f[f"wavelet_{name}_{level}"] = d.mean() / 2**level  # orthonormal Haar grows by 2 per level
    sd = y.std()
    kurt = ((y - y.mean()) ** 4).mean() / sd**4 if sd > 1e-12 else 0.0
    f["tamura_contrast"] = sd / kurt**0.25 if kurt > 0 else 0.0
    gx, gy = _sobel(y)
    mag = np.hypot(gx, gy)
    w = np.where(mag > 1e-6, mag, 0.0)  # rounding noise of a flat image has no direction
    f["directionality"] = abs((w * np.exp(2j * np.arctan2(gy, gx))).sum()) / max(w.sum(), 1e-12)
    # composition
    f["edge_density"] = (mag > EDGE_THRESHOLD).mean()
    H, W = y.shape
    inner = (slice(H // 3, 2 * H // 3), slice(W // 3, 2 * W // 3))
    zi = _hue_vector(h[inner], s[inner])
    f.update(
        thirds_hue_cos=zi.real,
        thirds_hue_sin=zi.imag,
        thirds_saturation=s[inner].mean(),
        thirds_brightness=v[inner].mean(),
    )
    d3 = haar_details(y, 3)[2]
    n = d3.shape[0] // 4
    f["low_depth_of_field"] = d3[n : 3 * n, n : 3 * n].sum() / max(d3.sum(), 1e-12)
    f.update(symmetry_left_right=1 - np.abs(y - y[:, ::-1]).mean(), symmetry_top_bottom=1 - np.abs(y - y[::-1]).mean())
    return {k: float(val) for k, val in f.items()}


FEATURE_NAMES: tuple[str, ...] = tuple(handcrafted_feature_dict(np.zeros((16, 16, 3))))


def handcrafted_features(
    path: str | os.PathLike, size: int = FEATURE_SIZE, max_pixels: int | None = None
) -> np.ndarray:
    """The FEATURE_NAMES of one image file: the whole image (EXIF-rotated RGB) resized to size x size."""
    kw = {} if max_pixels is None else {"max_pixels": max_pixels}
    im = load_image(path, **kw).resize((size, size), Image.Resampling.BILINEAR)
    return np.array(list(handcrafted_feature_dict(np.asarray(im, dtype=np.float64) / 255).values()))


def handcrafted_matrix(part: DatasetIndex, size: int = FEATURE_SIZE, progress: bool = False) -> np.ndarray:
    bar = progress_bar(len(part.samples), "hand-crafted features", enabled=progress)
    rows = []
    for s in part.samples:
        rows.append(handcrafted_features(s.path, size))
        bar.update(1)
    bar.close()
    return np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))


# ----------------------------------------------------------------------------- one against all, linear SVM


class OneAgainstAll(ClassifierMixin, BaseEstimator):
    """Machajdik & Hanbury's "one against all" (Sec. 4.4): one binary classifier per class, fitted on that class
    against all others; an image goes to the class whose classifier scores it highest (what scikit-learn's
    OneVsRestClassifier does, written out so the protocol is visible)."""

    def __init__(self, estimator=None):
        self.estimator = estimator

    def fit(self, x: np.ndarray, y: np.ndarray) -> "OneAgainstAll":
        self.classes_ = np.unique(y)
        self.estimators_ = [clone(self.estimator).fit(x, (y == c).astype(int)) for c in self.classes_]
        return self

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([e.decision_function(x) for e in self.estimators_])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[self.decision_function(x).argmax(1)]


def binary_svm(seed: int = 0, c: float = 1.0) -> LinearSVC:
    """(ours) C = 1 and balanced class weights: one class against seven is a 1:7 problem."""
    return LinearSVC(C=c, class_weight="balanced", max_iter=20000, random_state=seed)


def binary_logistic(seed: int = 0, c: float = 1.0) -> LogisticRegression:
    """A new last FC with one sigmoid output, trained with L2-regularised logistic loss (ours: C = 1, balanced)."""
    return LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)


def linear_svm(seed: int = 0, c: float = 1.0) -> Pipeline:
    """Standardised features, then one linear SVM per class (the classifier of every SVM baseline here)."""
    return make_pipeline(StandardScaler(), OneAgainstAll(binary_svm(seed, c)))


def linear_fc(seed: int = 0, c: float = 1.0) -> Pipeline:
    """Standardised features, then a new last FC of one logistic unit per class (Sec. 4.4's fine-tuned layer)."""
    return make_pipeline(StandardScaler(), OneAgainstAll(binary_logistic(seed, c)))


def svm_scores(clf, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Decision values as [N, num_classes] (a class absent from training scores -inf), then softmax: the
    p_<class> columns of an SVM baseline rank like its decisions but are not calibrated probabilities."""
    out = np.full((len(x), num_classes), -np.inf)
    out[:, clf[-1].classes_] = clf.decision_function(x)
    out = np.exp(out - out.max(1, keepdims=True))
    return out / out.sum(1, keepdims=True)


# ----------------------------------------------------------------------------- ImageNet networks and weights


def build_network(arch: str) -> nn.Module:
    """torchvision's AlexNet or ResNet-101 with ImageNet's 1000 outputs and no weights (nothing is downloaded)."""
    if arch == "alexnet":
        return torchvision.models.alexnet(weights=None)
    if arch == "resnet101":
        return torchvision.models.resnet101(weights=None)
    raise ConfigError(f"unknown network {arch!r}; choose alexnet or resnet101")


def last_layer(arch: str) -> str:
    """The state-dict prefix of the 1000-way ImageNet classifier, which a new layer replaces."""
    return "classifier.6." if arch == "alexnet" else "fc."


def cached_weights(arch: str) -> Path | None:
    """The ImageNet weights torchvision has cached for `arch` (torch.hub.get_dir()/checkpoints), if any."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    return next((folder / n for n in TORCHVISION_FILES[arch] if (folder / n).is_file()), None)


def resolve_weights(arch: str, weights: str | os.PathLike | None) -> tuple[Path | None, dict[str, Any]]:
    """`weights` None: torchvision's cached file if there is one; "none": random initialisation; else a path.
    Returns the file (or None) and the provenance recorded in metrics.json."""
    if weights is not None and str(weights).lower() == "none":
        path = None
    elif weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"weights file {path} does not exist; give a state dict saved with "
                f"torch.save(model.state_dict()), or torchvision's {TORCHVISION_FILES[arch][0]}"
            )
    else:
        path = cached_weights(arch)
    if path is None:
        looked = "" if weights is not None else f" (none given, none in {Path(torch.hub.get_dir()) / 'checkpoints'})"
        return None, {
            "pretrained": False,
            "weights": "random-init",
            "weights_note": f"no ImageNet weights{looked}: {arch} started from random initialisation and "
            "saw only this data; the paper's baseline starts from ImageNet weights",
        }
    return path, {
        "pretrained": True,
        "weights": str(path),
        "weights_note": f"{arch} ImageNet weights loaded from {path.name}",
    }


def load_weights(net: nn.Module, path: str | os.PathLike, arch: str) -> None:
    """Load a state dict file into `net`, all but its last (ImageNet 1000-way) layer.

    torch.load(weights_only=True): the file is data, never code, so a pickled payload is refused, not run.
    A file of another network or a damaged one gives a one-line CheckpointError that names it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, not a torch file at all
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(
            f"weights file {path} cannot be read as a state dict ({first[:160]}); give a file "
            "saved with torch.save(model.state_dict())"
        ) from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))  # training scripts wrap the state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"weights file {path} holds no state dict of tensors; give a file saved with "
            f"torch.save({arch}.state_dict())"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    skip = last_layer(arch)
    own = {k: v for k, v in net.state_dict().items() if not k.startswith(skip)}
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"weights file {path} does not fit {arch}: {k} has shape {tuple(state[k].shape)}, "
            f"the network needs {tuple(own[k].shape)} ({len(wrong)} tensor(s) differ)"
        )
    if missing:
        raise CheckpointError(
            f"weights file {path} does not fit {arch}: it lacks {missing[0]} and "
            f"{len(missing) - 1} other tensor(s) of the network"
        )
    net.load_state_dict({**net.state_dict(), **{k: state[k] for k in own}})


def cnn_input_size(name: str, cfg: Config) -> int:
    side = _budget(name, cfg)[0]
    return max(side, ALEXNET_MIN_INPUT) if name == "alexnet-svm" else side


def cnn_epochs(name: str, cfg: Config) -> int:
    return _budget(name, cfg)[1]


def _budget(name: str, cfg: Config) -> tuple[int, int]:
    """(input side, epochs) of an ImageNet baseline: the profile's baseline_budget (config.PROFILE_SETTINGS), else
    the profile's crop and train.stage_epochs."""
    budget = PROFILE_SETTINGS.get(cfg.profile, {}).get("baseline_budget", {})
    return budget.get(name, (cfg.data.crop, cfg.train.stage_epochs))


def _fit_input(x: torch.Tensor, side: int) -> torch.Tensor:
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)


def alexnet_fc7(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 4096-d output of fc7 after its ReLU: You et al.'s AlexNet feature (dropout is off in eval mode)."""
    x = torch.flatten(net.avgpool(net.features(x)), 1)
    return net.classifier[:6](x)


def resnet_pool5(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 2048-d global-average-pooled output of ResNet's last block: the input of its last FC."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


@torch.inference_mode()
def five_crop_features(
    fn: Callable[[torch.Tensor], torch.Tensor],
    loader,
    device: torch.device,
    side: int | None = None,
    desc: str = "features",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fn(crops) for every image, averaged over its five crops (Sec. 4.1). Returns (features, targets, indices)."""
    feats, ys, idx = [], [], []
    bar = progress_bar(len(loader), desc, enabled=progress)
    for x, y, i in loader:
        b = x.shape[0]
        x = x.reshape(-1, *x.shape[-3:]).to(device)
        f = fn(_fit_input(x, side) if side else x).float()
        feats.append(f.reshape(b, -1, f.shape[-1]).mean(1).cpu())
        ys.append(y)
        idx.append(i)
        bar.update(1)
    bar.close()
    return torch.cat(feats).numpy(), torch.cat(ys).numpy(), torch.cat(idx).numpy()


# ----------------------------------------------------------------------------- training a torchvision network


def train_network(
    net: nn.Module,
    name: str,
    rd,
    classes: list[str],
    cfg: Config,
    run,
    device: torch.device,
    side: int,
    epochs: int,
    progress: bool,
) -> None:
    """SGD with the profile's lr, momentum and staircase decay (Sec. 4.1), cross-entropy, one random corner or
    centre crop per image, mirrored at random unless data.mirror is off; one summary.csv row per epoch."""
    from .data import ShuffleBatchSampler, make_loader
    from .errors import TrainingError
    from .train import optimizer_step
    from .utils import derive_seed

    t = cfg.train
    sampler = ShuffleBatchSampler(len(rd.train.samples), t.batch_size, t.seed)
    loader = make_loader(rd.train, classes, cfg, train=True, batch_sampler=sampler)
    val_loader = make_loader(rd.val, classes, cfg, train=False) if rd.val.samples else None
    opt = torch.optim.SGD(net.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, t.lr_step, t.lr_gamma)
    bar = progress_bar(epochs * len(loader), f"{name:>16}", enabled=progress)
    for epoch in range(epochs):
        net.train()
        torch.manual_seed(derive_seed(t.seed, name, epoch))  # dropout
        sampler.set_epoch(derive_seed(name, epoch))
        loader.dataset.set_epoch(derive_seed(name, epoch))
        start, n, correct, total = time.perf_counter(), 0, 0, 0.0
        for x, y, _ in loader:
            x, y = x.to(device), y.to(device)
            logits = net(_fit_input(x, side))
            loss = F.cross_entropy(logits, y)
            try:
                optimizer_step([opt], loss, f"the loss of {name}")
            except TrainingError as e:
                raise TrainingError(f"{e} in epoch {epoch + 1}; lower the learning rate (--set train.lr=...)") from None
            n += len(y)
            correct += int((logits.argmax(1) == y).sum())
            total += float(loss.detach()) * len(y)
            bar.update(1)
        seconds = time.perf_counter() - start
        lr = opt.param_groups[0]["lr"]
        sched.step()
        val_acc = float("nan")
        if val_loader is not None and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == epochs):
            net.eval()
            p, yv, _ = five_crop_features(lambda z: torch.softmax(net(z), 1), val_loader, device, side)
            val_acc = accuracy(p, yv)
        run.append_summary(
            {
                "stage": name,
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": total / max(n, 1),
                "train_acc": correct / max(n, 1),
                "seconds": round(seconds, 3),
                "images_per_s": round(n / seconds, 2) if seconds > 0 else float("nan"),
                "val_acc": val_acc,
            }
        )
    bar.close()
    net.eval()


# ----------------------------------------------------------------------------- one baseline run


def run_baseline(
    name: str,
    cfg: Config,
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    split_csv: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train and evaluate one baseline of Table 1 into the run folder `out_dir`; return its metrics.

    The data, split (80/15/5 or `split_csv`, so a baseline can share a unified run's test set) and five-crop
    evaluation are those of `emotionlib.train.fit`. `weights`: an ImageNet state dict for alexnet-svm and
    resnet101 (None: torchvision's cached file if any; "none": random initialisation). With resume=True a
    finished folder returns its metrics; an unfinished one is run again from the start.
    """
    from .checkpoint import RunFolder
    from .train import prepare_data, set_deterministic, write_predictions
    from .utils import derive_seed

    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    validate(cfg)
    arch = {"alexnet-svm": "alexnet", "resnet101": "resnet101"}.get(name)
    if arch is None and weights is not None:
        raise ConfigError(f"--weights applies to alexnet-svm and resnet101, not {name}")
    wpath, provenance = resolve_weights(arch, weights) if arch else (None, {"pretrained": False, "weights": None})
    net = None
    if arch:  # build and load before anything is written: a wrong weights file fails first
        torch.manual_seed(derive_seed(cfg.train.seed, name, "init"))
        net = build_network(arch)
        if wpath is not None:
            load_weights(net, wpath, arch)
    run = RunFolder.open(out_dir, resume)
    if resume and (run.path / "metrics.json").exists():
        done = read_json(run.path / "metrics.json")
        if done.get("variant") != name:
            raise RunFolderError(f"cannot resume {run.path} as {name}: it holds a {done.get('variant')} run")
        return done
    set_deterministic(cfg.train.deterministic)
    device = resolve_device(cfg.train.device)
    rd = prepare_data(cfg, data_dir, run, split_csv, progress)
    classes = rd.index.classes
    settings: dict[str, Any] = {"svm": "StandardScaler + one-against-all LinearSVC(C=1, class_weight=balanced)"}
    if name == "handcrafted-svm":
        settings.update(features=list(FEATURE_NAMES), image_size=FEATURE_SIZE)
    else:
        settings.update(input_size=cnn_input_size(name, cfg), crop=cfg.data.crop)
        if name == "resnet101" or wpath is None:
            settings["epochs"] = cnn_epochs(name, cfg)
    write_json(
        run.path / "config.json",
        {"config": cfg.to_dict(), "baseline": name, "settings": settings, "emotionlib": __version__},
    )
    write_json(
        run.path / "run.json",
        {
            "data_root": str(rd.index.root.resolve()),
            "classes": classes,
            "variant": name,
            "profile": cfg.profile,
            "torch": torch.__version__,
            **provenance,
        },
    )

    n = len(classes)
    if name == "handcrafted-svm":
        xs = {k: handcrafted_matrix(getattr(rd, k), progress=progress) for k in ("train", "val", "test")}
        ys = {k: np.array(getattr(rd, k).targets) for k in xs}
        clf = linear_svm(cfg.train.seed).fit(xs["train"], ys["train"])
        probs = {k: svm_scores(clf, xs[k], n) if len(xs[k]) else np.zeros((0, n)) for k in xs}
        idx = np.arange(len(rd.test.samples))
    else:
        probs, ys, idx = _cnn_baseline(name, net, wpath is not None, rd, classes, cfg, run, device, progress)
    s = summarise_predictions(ys["test"], probs["test"], classes)
    metrics: dict[str, Any] = {
        "variant": name,
        "baseline": True,
        "description": BASELINES[name],
        "profile": cfg.profile,
        "seed": cfg.train.seed,
        "device": str(device),
        "classes": classes,
        "n_train": len(rd.train.samples),
        "n_val": len(rd.val.samples),
        "n_test": len(rd.test.samples),
        "n_skipped": len(rd.index.skipped),
        "test_accuracy": s["accuracy"],
        "per_class_tpr": s["per_class_tpr"],
        "mean_tpr": s["mean_tpr"],
        "confusion": s["confusion"],
        "val_accuracy": accuracy(probs["val"], ys["val"]),
        **provenance,
        "settings": settings,
        "paper_table1": {
            "row": TABLE1_BASELINE_ROW[name],
            "fi_accuracy_percent": TABLE1[TABLE1_BASELINE_ROW[name]],
            "note": "the paper's number on FI, for reference; not measured by this run",
        },
    }
    write_predictions(run.path / "predictions.csv", rd.test, classes, probs["test"], ys["test"], idx)
    write_json(run.path / "metrics.json", metrics)
    return metrics


def _cnn_baseline(name, net, pretrained, rd, classes, cfg, run, device, progress):
    """alexnet-svm: (train from scratch if no weights, then) fc7 features + linear SVM; resnet101: fine-tune."""
    from .data import make_loader
    from .utils import derive_seed

    side, n = cnn_input_size(name, cfg), len(classes)
    torch.manual_seed(derive_seed(cfg.train.seed, name, "new-layer"))
    if name == "resnet101":
        net.fc = nn.Linear(net.fc.in_features, n)  # a new last layer for our classes; the rest is fine-tuned
    elif not pretrained:
        net.classifier[6] = nn.Linear(4096, n)  # trained from scratch as a classifier, then read at fc7
    net = net.to(device)
    if name == "resnet101" or not pretrained:
        train_network(net, name, rd, classes, cfg, run, device, side, cnn_epochs(name, cfg), progress)
    net.eval()
    loaders = {k: make_loader(getattr(rd, k), classes, cfg, train=False) for k in ("train", "val", "test")}
    probs, ys, idx = {}, {}, None
    for k in ("train", "val", "test") if name == "alexnet-svm" else ("val", "test"):
        if not getattr(rd, k).samples:
            probs[k], ys[k] = np.zeros((0, n)), np.zeros(0, dtype=int)
            continue
        fn = (lambda z: alexnet_fc7(net, z)) if name == "alexnet-svm" else (lambda z: torch.softmax(net(z), 1))
        f, ys[k], i = five_crop_features(fn, loaders[k], device, side, desc=f"{name} {k}", progress=progress)
        probs[k] = f
        idx = i if k == "test" else idx
    if name == "alexnet-svm":
        clf = linear_svm(cfg.train.seed).fit(probs["train"], ys["train"])
        probs = {k: svm_scores(clf, probs[k], n) if len(probs[k]) else probs[k] for k in probs}
    return probs, ys, idx


__all__ = [
    "BASELINES",
    "FEATURE_NAMES",
    "OneAgainstAll",
    "run_baseline",
    "handcrafted_features",
    "handcrafted_feature_dict",
    "linear_svm",
    "linear_fc",
    "load_weights",
    "resolve_weights",
    "build_network",
    "alexnet_fc7",
    "resnet_pool5",
    "five_crop_features",
    "cached_weights",
]
