"""The run folder and its checkpoints: where a run's files go, how a checkpoint is written and read back, and
the one way from a checkpoint file to (model, configuration).

A run folder holds config.json, run.json, split.csv, skipped.csv, summary.csv (one row per stage and epoch),
metrics.json, predictions.csv and checkpoints/ (last.pt to resume, one file per finished stage, model.pt).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .data import DatasetIndex, read_split
from .errors import CheckpointError, EmotionLibError, RunFolderError
from .model import UnifiedCNNRNN
from .utils import atomic_path, read_json, write_text


@dataclass
class RunFolder:
    """One run's folder. Never silently overwritten: a non-empty folder needs `resume=True`."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def complete(self) -> bool:
        return (self.path / "metrics.json").exists() and (self.checkpoints / "model.pt").exists()

    @classmethod
    def open(cls, path: str | os.PathLike, resume: bool) -> "RunFolder":
        run = cls(Path(path))
        if run.path.exists() and not run.path.is_dir():
            raise RunFolderError(f"--out {run.path} is a file, not a folder")
        exists = run.path.exists() and any(p.name != ".lock" for p in run.path.iterdir())  # .lock: folder_lock
        if exists and not resume:
            raise RunFolderError(
                f"run folder {run.path} already exists and is not empty; pass --resume to continue "
                "it, or choose another --out"
            )
        if resume and exists and not (run.path / "config.json").exists():
            raise RunFolderError(f"cannot resume {run.path}: it has no config.json, so it is not a run folder")
        try:
            run.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"cannot write the run folder {run.path}: {e.strerror or e}") from None
        return run

    def append_summary(self, row: dict[str, Any]) -> None:
        self.write_summary(read_summary(self.path / "summary.csv") + [row])

    def truncate_summary(self, stage_names: list[str], stage: int, epoch: int) -> None:
        """Drop rows past the checkpoint (stage index, epochs done): a process killed between writing a row and its
        checkpoint must not leave a duplicate row after --resume."""
        order = {name: i for i, name in enumerate(stage_names)}
        keep = [
            r for r in read_summary(self.path / "summary.csv") if (order[r["stage"]], int(r["epoch"])) <= (stage, epoch)
        ]
        self.write_summary(keep)

    def write_summary(self, rows: list[dict[str, Any]]) -> None:
        path = self.path / "summary.csv"
        if not rows:
            write_text(path, "")
            return
        cols: list[str] = []
        for r in rows:
            cols += [c for c in r if c not in cols]
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)


def read_summary(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def split_parts(
    run_dir: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    classes: list[str] | None = None,
    max_pixels: int | None = None,
) -> dict[str, DatasetIndex]:
    """The train / val / test parts of a run's split.csv (its test set never moves), on the run's dataset folder
    (run.json) unless `data_root` is given."""
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "run.json")
    root = data_root if data_root is not None else meta["data_root"]
    kw = {} if max_pixels is None else {"max_pixels": max_pixels}
    index = read_split(
        run_dir / "split.csv", root=root, classes=classes if classes is not None else meta["classes"], **kw
    )
    return index.parts()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomic: a crash while writing leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """`weights_only=True`: a checkpoint is data, never code (a pickled payload is refused, not executed)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({first[:200]}); it is damaged or not a checkpoint of emotionlib"
        ) from None


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load `state` into `model`. A model saved channels-last (train.channels_last) comes back channels-last: the
    outputs are the same and its convolutions run faster on the CPU (README, Performance)."""
    if any(
        t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
        for t in state.values()
    ):
        model.to(memory_format=torch.channels_last)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next(
            (line for line in lines if "size mismatch" in line or "Missing" in line or "Unexpected" in line),
            lines[0] if lines else "",
        )
        raise CheckpointError(
            f"checkpoint {path} belongs to another architecture or class count: {detail[:200]}"
        ) from None


def load_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[UnifiedCNNRNN, Config, dict[str, Any]]:
    """(model in eval mode on `device`, its configuration, the whole checkpoint) from one checkpoint file: a run's
    model.pt, a stage file (stage-main.pt: the CNN after Sec. 3.2's stages) or last.pt."""
    path = Path(path)
    ckpt = load_checkpoint(path, device)
    missing = sorted({"model", "config"} - set(ckpt))
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}; it is not a model of emotionlib")
    try:
        cfg = Config.from_dict(ckpt["config"])  # not validate(): its device may be one this machine lacks
    except (EmotionLibError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path} holds an unusable configuration ({e})") from None
    model = UnifiedCNNRNN(cfg.model)
    load_model_state(model, ckpt["model"], path)
    return model.to(device).eval(), cfg, ckpt


def load_run(run: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[UnifiedCNNRNN, Config, list[str]]:
    """The trained model of a finished run folder, its configuration and class names."""
    path = Path(run) / "checkpoints" / "model.pt"
    if not path.exists():
        raise RunFolderError(f"{run} holds no trained model ({path} is missing); train it first or pass --resume")
    model, cfg, ckpt = load_model(path, device)
    if "classes" not in ckpt:
        raise CheckpointError(f"checkpoint {path} lacks classes; it is not a finished model of emotionlib")
    classes = ckpt["classes"]  # one distinct name per output of the classifier, or predictions name the wrong class
    if (
        not isinstance(classes, (list, tuple))
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
        or len(classes) != cfg.model.num_classes
    ):
        raise CheckpointError(
            f"checkpoint {path} lists {len(classes) if isinstance(classes, (list, tuple)) else '?'} "
            f"class name(s) for a model of {cfg.model.num_classes} classes"
        )
    return model, cfg, list(classes)


__all__ = [
    "RunFolder",
    "read_summary",
    "split_parts",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_state",
    "load_model",
    "load_run",
]
