"""Using a finished run: five-crop evaluation on a dataset and per-image prediction."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import torch

from .config import Config
from .data import EmotionDataset, Sample, open_dataset, read_split
from .errors import DataError
from .evaluate import predict_probs, summarise_predictions
from .train import load_run, make_loader
from .utils import read_json, resolve_device, write_json


def evaluate_run(run: str | os.PathLike, data: str | os.PathLike | None = None, device: str = "auto") -> dict[str, Any]:
    """Accuracy, per-class TPR and confusion on the run's own test split, or on every image of `data` (whose class
    names must be among the run's). Writes RUN/evaluations/<name>.json."""
    run = Path(run)
    dev = resolve_device(device)
    model, cfg, classes = load_run(run, dev)
    if data is None:
        root = Path(read_json(run / "run.json")["data_root"])
        part = read_split(run / "split.csv", root=root).subset("test")
        name = "test"
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
    loader = make_loader(part, classes, cfg, train=False)
    p, y, _ = predict_probs(model, loader, dev, None, cfg.train.amp)
    s = summarise_predictions(y, p, classes)
    result = {"run": str(run), "data": name, "data_path": str(run / "split.csv") if data is None else resolved,
              "classes": classes, **s}
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
        ds = EmotionDataset([Sample(path, classes[0])], {c: i for i, c in enumerate(classes)}, resize=cfg.data.resize,
                            crop=cfg.data.crop, train=False, max_pixels=cfg.data.max_pixels, cache=False)
        x = ds[0][0]  # (5, 3, crop, crop)
        with torch.inference_mode():
            p = torch.softmax(model(x.to(dev)).float(), dim=1).mean(0)
        yield {"image": str(path), "emotion": classes[int(p.argmax())],
               "probabilities": {c: round(float(v), 6) for c, v in zip(classes, p)}}


__all__ = ["evaluate_run", "predict_images", "Config"]
