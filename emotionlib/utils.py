"""Small shared helpers: atomic writes (text, JSON, CSV), dataset-relative paths, file hashes, seeding, devices."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A reader never sees a half-written file and a crash never destroys the previous version
    (timm's habit: write to a temporary name, then os.replace).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv(path: str | os.PathLike, header: list[str], rows) -> None:
    """Rows under a header as CSV, atomically (atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def relative_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """`path` relative to the dataset folder `root`, with forward slashes, as split.csv, predictions.csv and the
    feature caches store it; a path outside `root` stays absolute, so it still names the file."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return p.as_posix()


def file_sha256(path: str | os.PathLike, length: int = 16) -> str:
    """The first `length` hex digits of a file's SHA-256: which weight file a result came from."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple, stable across processes (Python's hash() is salted)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (Hopper/Ampere tensor cores); a no-op elsewhere, so CPU runs stay in fp32."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


def in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


def progress_bar(total: int, desc: str, enabled: bool = True, **kw):
    """tqdm that stays readable everywhere: a widget in JupyterLab, a live bar on a terminal, and in logs
    (papermill, CI) a line every 30 s instead of thousands of carriage returns."""
    import sys

    from tqdm.auto import tqdm as auto_tqdm
    from tqdm.std import tqdm as std_tqdm

    if in_notebook():
        return auto_tqdm(total=total, desc=desc, disable=not enabled, **kw)
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return std_tqdm(total=total, desc=desc, disable=not enabled, mininterval=0.1 if tty else 30.0,
                    ascii=not tty, dynamic_ncols=tty, **kw)
