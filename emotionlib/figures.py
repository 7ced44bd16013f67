"""Figures and tables: one style, and files that are the same bytes every time they are made.

Every figure is saved as PNG and PDF beside the notebook that shows it inline; metadata that would change from
run to run (creation date, software version strings) is fixed, so reruns do not churn the files.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

from .utils import atomic_path

_FIXED_META = {
    "png": {"Software": "emotionlib"},
    "pdf": {"Creator": "emotionlib", "Producer": "emotionlib", "CreationDate": None},
}


def setup(seed: int = 0, style: str = "whitegrid") -> None:
    """The one call every notebook opens with: seeds, plotting defaults, deterministic SVG/PDF hashes."""
    import seaborn as sns

    from .utils import seed_everything

    seed_everything(seed)
    sns.set_theme(style=style, context="notebook")
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 120, "savefig.bbox": "tight",
                                "svg.hashsalt": "emotionlib", "pdf.compression": 6})


def save_figure(fig, path: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save `fig` as path.png and path.pdf (atomically, reproducible metadata); return the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, metadata=_FIXED_META.get(fmt))
        written.append(target)
    return written


def save_table(df, path: str | os.PathLike, **kw) -> Path:
    """A pandas DataFrame as CSV, atomically."""
    path = Path(path).with_suffix(".csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kw)
    return path
