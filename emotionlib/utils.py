"""Small shared helpers: atomic writes (text, JSON, CSV), dataset-relative paths, file hashes, seeding, devices."""

from __future__ import annotations

import csv
import errno
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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise _write_error(path, e) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in _DISK_ERRNOS:  # disk full, quota, read-only: one line; the previous version is kept
            raise _write_error(path, e) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _write_error(path: Path, e: OSError):
    from .errors import RunFolderError

    kept = " (the previous version is kept)" if path.exists() else ""
    return RunFolderError(f"cannot write {path}: {e.strerror or e}{kept}")


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on FOLDER/.lock (with this process's id in it) while the block runs, so a second
    writer (two `--resume` at once, a train into a folder being trained) is refused instead of interleaving its
    epochs with the first's. The kernel drops the lock when the process dies, so a killed run never blocks."""
    import fcntl

    from .errors import RunFolderError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"--out {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / ".lock", "a+")
    except OSError as e:
        raise RunFolderError(f"cannot write the run folder {folder}: {e.strerror or e}") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip() or "?"
        f.close()
        raise RunFolderError(
            f"run folder {folder} is in use by process {pid}; wait for it to finish, or choose another --out"
        ) from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield folder
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any, strict: bool = False) -> None:
    """`strict`: NaN and infinities become null, so any JSON reader can read the file (json.dumps alone writes a
    bare NaN, which is not JSON)."""
    if strict:
        text = json.dumps(finite_or_none(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    else:
        text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default)
    write_text(path, text + "\n")


def finite_or_none(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None (null in JSON)."""
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


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


def check_device(name: str) -> None:
    """A ConfigError for a device name torch cannot parse or this machine does not have, before anything runs."""
    from .errors import ConfigError

    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: no CUDA device is available here; use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"device {name!r}: Apple's MPS is not available here; use auto or cpu")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: use auto, cpu, cuda, cuda:N or mps")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU."""
    check_device(name)
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


# Set by emotionlib.pipeline for the kernels papermill starts: they are notebooks, but no front end renders a widget there.
NO_WIDGETS_ENV = "EMOTIONLIB_NO_WIDGETS"


class _Lines:
    """A log stream for tqdm: drops the lone carriage returns and newlines it writes around its in-place bar."""

    def __init__(self, fp):
        self.fp = fp

    def write(self, s: str) -> None:
        if s not in ("", "\r", "\n"):
            self.fp.write(s)

    def flush(self) -> None:
        getattr(self.fp, "flush", lambda: None)()


def _line_bar():
    from tqdm.std import tqdm

    class LineBar(tqdm):
        """One plain line per refresh (at most every `mininterval` s, and at close): readable in logs."""

        @staticmethod
        def status_printer(file):
            last = [None]

            def print_status(s):
                if s and s != last[0]:
                    file.write(s.replace("\r", "") + "\n")
                    getattr(file, "flush", lambda: None)()
                    last[0] = s

            return print_status

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            if hasattr(self, "fp"):  # a disabled bar has none
                self.fp = _Lines(self.fp)

    return LineBar


def progress_bar(total: int, desc: str, enabled: bool = True, file=None, **kw):
    """tqdm that stays readable everywhere: a widget in JupyterLab, a live bar on a terminal, and in logs
    (papermill's kernels, CI, any stream that is not a terminal) a plain line every 30 s and at close."""
    import os
    import sys

    from tqdm.std import tqdm as std_tqdm

    if in_notebook() and not os.environ.get(NO_WIDGETS_ENV):
        from tqdm.notebook import tqdm as widget_tqdm  # a text bar of its own if ipywidgets is missing

        return widget_tqdm(total=total, desc=desc, disable=not enabled, file=file, **kw)
    stream = sys.stderr if file is None else file
    if hasattr(stream, "isatty") and stream.isatty():
        return std_tqdm(
            total=total,
            desc=desc,
            disable=not enabled,
            file=stream,
            **{"mininterval": 0.1, "dynamic_ncols": True, **kw},
        )
    return _line_bar()(
        total=total,
        desc=desc,
        disable=not enabled,
        file=stream,
        **{"mininterval": 30.0, "ascii": True, "ncols": 100, **kw},
    )
