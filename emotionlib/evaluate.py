"""Metrics of Sec. 4.3-4.4: accuracy (Table 1), row-normalised confusion (Fig. 6), true-positive rate per class
(Fig. 7-8); five-crop evaluation (Sec. 4.1), the one path every score goes through; and using a finished run:
evaluation on a dataset and per-image prediction."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .checkpoint import load_run, split_parts
from .data import EmotionDataset, Sample, make_loader, open_dataset
from .errors import DataError
from .utils import autocast, resolve_device, write_json


def confusion_matrix(targets, preds, num_classes: int, normalize: bool = True) -> np.ndarray:
    """Rows are true classes, columns predictions; `normalize` divides each row by its count (Fig. 6)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(cm, (np.asarray(targets, dtype=int), np.asarray(preds, dtype=int)), 1)
    return row_normalise(cm) if normalize else cm


def row_normalise(confusion) -> np.ndarray:
    """Each row of a confusion matrix divided by its sum (Fig. 6's rows sum to one); an empty row stays zero."""
    cm = np.array(confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)


def cue_errors(confusion, classes, factors=None):
    """For data whose classes are combinations of cues (the built-in data: synth.CLASS_FACTORS), the share of a
    model's errors that get each cue wrong: the off-diagonal mass of the row-normalised confusion, each row
    weighted equally, whose predicted class differs from the true one in that cue. A cue the model reads well
    is rarely wrong in its errors; an error can get several cues wrong, so the shares need not sum to one."""
    import pandas as pd

    from .synth import CLASS_FACTORS

    factors = CLASS_FACTORS if factors is None else factors
    cm = row_normalise(confusion)
    np.fill_diagonal(cm, 0)
    total = cm.sum()
    cues = list(next(iter(factors.values())))
    out = {}
    for cue in cues:
        differs = np.array([[factors[a][cue] != factors[b][cue] for b in classes] for a in classes])
        out[cue] = float((cm * differs).sum() / total) if total > 0 else float("nan")
    return pd.Series(out, name="share of errors with this cue wrong")


def per_class_tpr(targets, preds, num_classes: int) -> np.ndarray:
    """True-positive rate (recall) of each class: the diagonal of the row-normalised confusion matrix."""
    return np.diag(confusion_matrix(targets, preds, num_classes, normalize=True))


def one_against_all_tpr(targets, binary_preds, num_classes: int) -> np.ndarray:
    """Machajdik & Hanbury's rate per class (Sec. 4.4, "one against all"): class c's own binary classifier
    ("c or not c?", `binary_preds[:, c]`) scored on its own task, its true-positive rate averaged over the
    class's positive and negative examples,

        TPR_c = 1/2 (|{i : y_i = c, b_ic}| / |{i : y_i = c}| + |{i : y_i != c, not b_ic}| / |{i : y_i != c}|),

    which is scikit-learn's balanced_accuracy_score of that binary task. Chance is 0.5 for any number of
    classes. A class with no positive or no negative example gets NaN."""
    y = np.asarray(targets, dtype=int)
    b = np.asarray(binary_preds, dtype=bool).reshape(len(y), num_classes)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        pos = y == c
        if pos.any() and (~pos).any():
            out[c] = (b[pos, c].mean() + (~b[~pos, c]).mean()) / 2
    return out


def top_confusions(confusion, classes, k: int = 3) -> list[tuple[str, str, float]]:
    """The k largest off-diagonal entries (true class, predicted class, share of the true class), largest first."""
    cm = np.array(confusion, dtype=float)
    np.fill_diagonal(cm, -np.inf)
    flat = np.argsort(-cm, axis=None, kind="stable")[:k]
    return [(classes[i], classes[j], float(cm[i, j])) for i, j in zip(*np.unravel_index(flat, cm.shape))]


def accuracy(probs: np.ndarray, targets) -> float:
    """Top-1 accuracy of class probabilities (or scores) [N, C] against targets [N]; NaN for no images."""
    targets = np.asarray(targets)
    return float((np.asarray(probs).argmax(1) == targets).mean()) if len(targets) else float("nan")


def summarise_predictions(targets, probs: np.ndarray, classes: list[str]) -> dict:
    preds = probs.argmax(axis=1)
    targets = np.asarray(targets)
    n = len(classes)
    tpr = per_class_tpr(targets, preds, n).copy()  # np.diag's view is read-only
    # mean TPR over the classes the data holds: an absent class has no rate (NaN, null in JSON), not 0
    present = [i for i in range(n) if (targets == i).any()]
    tpr[[i for i in range(n) if i not in present]] = np.nan
    return {
        "accuracy": accuracy(probs, targets),
        "per_class_tpr": {c: float(t) for c, t in zip(classes, tpr)},
        "mean_tpr": float(tpr[present].mean()) if present else float("nan"),
        "mean_tpr_classes": [classes[i] for i in present],
        "confusion": confusion_matrix(targets, preds, n).round(6).tolist(),
        "n": int(len(targets)),
    }


#: Index of the centre crop among the five test crops (torchvision's FiveCrop order: four corners, then the centre).
CENTRE_CROP = 4

#: crops per forward pass on the CPU, small enough for their activations to stay in cache (docs/performance.md); a
#: GPU takes the whole batch.
CPU_CHUNK = 16


def channels_last_model(model: nn.Module) -> bool:
    """Whether the model's convolutions hold channels-last weights (1x1 kernels look the same either way)."""
    w = next((p for p in model.parameters() if p.dim() == 4 and p.shape[-1] > 1), None)
    return w is not None and not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)


def crop_chunks(x: torch.Tensor, device: torch.device, channels_last: bool) -> list[torch.Tensor]:
    """A batch of crops (N, 3, H, W) as the pieces one forward pass should take: CPU_CHUNK crops on the CPU, all
    of them on a GPU; channels-last when the weights are."""
    if channels_last:  # NHWC input for NHWC weights: no layout conversion inside every convolution
        x = x.contiguous(memory_format=torch.channels_last)
    return [x] if device.type == "cuda" else list(x.split(CPU_CHUNK))


def _crop_batches(model: nn.Module, loader, device: torch.device, centre_only: bool = False):
    """(chunks of the batch's crops, images, crops per image, targets, indices) per batch of an evaluation loader."""
    model.eval()
    cl = channels_last_model(model)
    for x, y, idx in loader:
        x = x.to(device, non_blocking=True)
        if centre_only and x.dim() == 5:
            x = x[:, CENTRE_CROP : CENTRE_CROP + 1]
        b, crops = x.shape[0], x.shape[1] if x.dim() == 5 else 1
        yield crop_chunks(x.reshape(-1, *x.shape[-3:]), device, cl), b, crops, y, idx


def mean_softmax(logits: torch.Tensor, b: int, crops: int) -> torch.Tensor:
    """Softmax of each crop's logits, averaged over the crops of each image (five-crop evaluation)."""
    return torch.softmax(logits.float(), dim=1).reshape(b, crops, -1).mean(1).cpu()


@torch.inference_mode()
def predict_probs(
    model: nn.Module,
    loader,
    device: torch.device,
    heads: str | None = None,
    amp: bool = False,
    centre_only: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class probabilities averaged over the five crops of each image (Sec. 4.1's corner and centre crops).

    `heads=None` scores the variant's final output; a branch key ("branch1", ..., "main") scores that branch's
    own classifier. `centre_only` scores the centre crop alone (the last of the five). Returns (probs [N, C],
    targets [N], dataset indices [N]).
    """
    all_p, all_y, all_i = [], [], []
    for chunks, b, crops, y, idx in _crop_batches(model, loader, device, centre_only):
        with autocast(device, amp):
            logits = torch.cat([model(c) if heads is None else model.extract(c, [heads])[heads][1] for c in chunks])
        all_p.append(mean_softmax(logits, b, crops))
        all_y.append(y)
        all_i.append(idx)
    return torch.cat(all_p).numpy(), torch.cat(all_y).numpy(), torch.cat(all_i).numpy()


@torch.inference_mode()
def predict_all(
    model: nn.Module, loader, device: torch.device, amp: bool = False
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """predict_probs for the variant's output and every branch's own classifier from one pass of the network
    (the trunk is the cost; running it once per head made evaluation most of a smoke run's overhead).
    Returns (final probs [N, C], {branch key: probs [N, C]}, targets [N], dataset indices [N])."""
    final, per_key, all_y, all_i = [], {}, [], []
    for chunks, b, crops, y, idx in _crop_batches(model, loader, device):
        with autocast(device, amp):
            parts = [model.extract(c) for c in chunks]
            feats = {k: tuple(torch.cat([p[k][j] for p in parts]) for j in (0, 1)) for k in parts[0]}
            logits = model.fuse(feats)
        final.append(mean_softmax(logits, b, crops))
        for k, (_, lk) in feats.items():
            per_key.setdefault(k, []).append(mean_softmax(lk, b, crops))
        all_y.append(y)
        all_i.append(idx)
    return (
        torch.cat(final).numpy(),
        {k: torch.cat(v).numpy() for k, v in per_key.items()},
        torch.cat(all_y).numpy(),
        torch.cat(all_i).numpy(),
    )


# ----------------------------------------------------------------------------- using a finished run


def evaluate_run(run: str | os.PathLike, data: str | os.PathLike | None = None, device: str = "auto") -> dict[str, Any]:
    """Accuracy, per-class TPR and confusion on the run's own test split, or on every image of `data` (whose class
    names must be among the run's). Writes RUN/evaluations/<name>.json."""
    run = Path(run)
    dev = resolve_device(device)
    model, cfg, classes = load_run(run, dev)
    if data is None:
        part, name = split_parts(run, classes=classes)["test"], "test"
    else:
        part = open_dataset(data)
        unknown = sorted(set(part.classes) - set(classes))
        if unknown:
            raise DataError(f"{data} has classes the run was not trained on: {', '.join(unknown)}")
        part.classes = list(classes)
        # named by the resolved path (a slug and a short hash): `--data other/test` must not overwrite test.json
        resolved = str(Path(data).resolve())
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(resolved).stem or "data")[:40]
        name = f"{slug}-{hashlib.sha256(resolved.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
    p, y, _ = predict_probs(model, make_loader(part, classes, cfg, train=False), dev, None, cfg.train.amp)
    result = {
        "run": str(run),
        "data": name,
        "data_path": str(run / "split.csv") if data is None else resolved,
        "classes": classes,
        **summarise_predictions(y, p, classes),
    }
    write_json(run / "evaluations" / f"{name}.json", result, strict=True)
    return {k: result[k] for k in ("data", "accuracy", "mean_tpr", "mean_tpr_classes", "n")}


def predict_images(run: str | os.PathLike, images: list[str | os.PathLike], device: str = "auto") -> Iterator[dict]:
    """For each image: {"image", "emotion", "probabilities"}, averaged over the five crops."""
    dev = resolve_device(device)
    model, cfg, classes = load_run(run, dev)
    for path in images:
        path = Path(path)
        if not path.exists():
            raise DataError(f"image {path} does not exist")
        ds = EmotionDataset(
            [Sample(path, classes[0])],
            {c: i for i, c in enumerate(classes)},
            resize=cfg.data.resize,
            crop=cfg.data.crop,
            train=False,
            max_pixels=cfg.data.max_pixels,
            cache=False,
        )
        x = ds[0][0]  # (5, 3, crop, crop)
        with torch.inference_mode():
            p = mean_softmax(model(x.to(dev)), 1, x.shape[0])[0]
        yield {
            "image": str(path),
            "emotion": classes[int(p.argmax())],
            "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)},
        }
