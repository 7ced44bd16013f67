"""Shared fixtures: tiny images and a tiny FI-style folder, generated in tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (12, 10), color=None, mode: str = "RGB", **save) -> Path:
    """Save a `size` (width, height) image: a solid `color`, or a deterministic pattern when None."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if color is None:
        w, h = size
        a = (np.arange(w * h * 3).reshape(h, w, 3) * 7 % 256).astype(np.uint8)  # every pixel differs
        im = Image.fromarray(a, "RGB")
        im = im if mode == "RGB" else im.convert(mode)
    else:
        im = Image.new(mode, size, color)
    im.save(path, **save)
    return path


class Killed(BaseException):
    """What `kill_after_epochs` raises: a process killed mid-epoch (not an Exception, so nothing catches it)."""


def kill_after_epochs(monkeypatch, n: int) -> None:
    """Make train.fit die inside epoch n + 1, as a killed process would: the first n epochs and their checkpoints
    are on disk, the epoch it died in is not."""
    import emotionlib.train as T

    real, calls = T.train_one_epoch, []

    def epoch(*a, **k):
        calls.append(1)
        if len(calls) > n:
            raise Killed(f"killed in epoch {len(calls)}")
        return real(*a, **k)

    monkeypatch.setattr(T, "train_one_epoch", epoch)


@pytest.fixture
def make_image():
    """`make_image(path, size=(w, h), color=None, mode="RGB", **save_kwargs) -> path`."""
    return write_image


@pytest.fixture
def fi_folder(tmp_path) -> Path:
    """FI as published, in miniature: amusement 4, fear 3, sadness 5 images of distinct sizes."""
    root = tmp_path / "FI"
    for label, n in (("sadness", 5), ("amusement", 4), ("fear", 3)):
        for k in range(n):
            write_image(root / label / f"{label}_{k:04d}.jpg", size=(20 + k, 16 + 2 * k))
    return root
