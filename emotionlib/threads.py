"""How many intra-op threads PyTorch uses on the CPU, chosen once per process and recorded in the run folder.

    --threads N | cores | auto        (train, table1, evaluate, predict, small, reproduce, bench)
    EMOTIONLIB_THREADS=N|cores|auto   (the same, for the library and the notebook kernels)
    threads = "cores"                 (the notebooks' parameter)

"cores" (the default) is the number of cores this process may run on (os.sched_getaffinity), which on an idle
machine is PyTorch's own default: the pipeline's numbers do not move. "auto" also subtracts the load it finds
(the threads running now, load_average), so a second CPU-bound process on two cores leaves one thread: faster on a busy
machine, but the thread count, and with it the last bits of a float sum, then depend on the moment.

Threads that wait for a core another process holds spin (OpenMP's active wait) and steal it back: with one
background process on two cores a smoke `fit` ran 7x slower instead of 2x. A shorter spin (and for "auto" the
passive policy: sleep at once) must be in the environment before torch loads OpenMP, so `prepare_environment`
runs in the command-line entry point and its environment is what `emotionlib reproduce` hands its kernels.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .errors import ConfigError

ENV = "EMOTIONLIB_THREADS"
DEFAULT = "cores"
#: OpenMP's wait policy, set before torch is imported (libgomp reads it when it loads; KMP_BLOCKTIME is Intel
#: OpenMP's). Waiting threads that sleep at once (passive) cost nothing beside a busy process but wake slowly: on
#: idle cores `emotionlib bench` measured the sweep's feature extraction 1.5-1.9x slower than today's spinning.
#: A short spin (10,000 rounds instead of libgomp's 300,000) kept the idle speed and cut the collapse beside a busy
#: process 4-8x; "auto" (one thread under load) takes the passive policy, the default the short spin.
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}
SHORT_SPIN = {"GOMP_SPINCOUNT": "10000"}
_OPENMP_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

_chosen: dict[str, Any] | None = None


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity, cgroup cpusets as the kernel applies them)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def load_average() -> float | None:
    """Other runnable threads now: on Linux the running count of /proc/loadavg less this process's reader, the
    median of five looks over 0.1 s (the 1-minute average lags a process that started seconds ago); elsewhere
    the 1-minute load average."""
    try:
        looks = []
        for i in range(5):
            with open("/proc/loadavg") as f:
                looks.append(int(f.read().split()[3].split("/")[0]) - 1)
            if i < 4:
                time.sleep(0.025)
        return float(sorted(looks)[2])
    except (OSError, ValueError, IndexError):
        pass
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def parse_threads(value: Any, source: str = "--threads") -> int | str:
    """A thread setting: a whole number >= 1, "cores" or "auto"; anything else is a one-line ConfigError."""
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        if text in ("cores", "auto"):
            return text
        try:
            n = int(text)
        except ValueError:
            raise ConfigError(f"{source} {value!r}: give a number of threads (1, 2, ...), 'cores' or 'auto'") from None
    if n < 1:
        raise ConfigError(f"{source} {value!r}: give at least 1 thread, or 'cores' or 'auto'")
    return n


def choose_threads(setting: int | str, cores: int | None = None, load: float | None = None) -> int:
    """The intra-op thread count for `setting`: N as given (capped at the usable cores: more threads than cores
    only wait for each other), "cores" the usable cores, "auto" the cores that the load leaves free (at least
    one). The load counts this process's own running threads, so call this at start-up."""
    cores = usable_cores() if cores is None else cores
    if setting == "cores":
        return cores
    if setting == "auto":
        if load is None:
            return cores
        return max(1, min(cores, cores - int(load + 0.5)))
    return max(1, min(int(setting), cores))


def prepare_environment(env: dict[str, str] | None = None, setting: int | str | None = None) -> dict[str, str]:
    """Put the OpenMP wait policy for `setting` (None: EMOTIONLIB_THREADS, else the default) into `env` (default
    os.environ): passive for "auto", the short spin otherwise; a user's own OpenMP wait settings are left alone."""
    env = os.environ if env is None else env
    if any(k in env for k in _OPENMP_KEYS):
        return env
    if setting is None:
        setting = str(env.get(ENV, DEFAULT)).strip().lower()
    env.update(WAIT_POLICY if setting == "auto" else SHORT_SPIN)
    return env


def _wait_policy() -> str:
    if os.environ.get("OMP_WAIT_POLICY"):
        return os.environ["OMP_WAIT_POLICY"].lower()
    return f"spin {os.environ['GOMP_SPINCOUNT']}" if os.environ.get("GOMP_SPINCOUNT") else "OpenMP's default"


def set_threads(setting: int | str | None = None) -> dict[str, Any]:
    """Choose and apply the intra-op thread count (torch.set_num_threads); `setting` None reads EMOTIONLIB_THREADS,
    then OMP_NUM_THREADS, then takes the default "cores". Returns what was chosen (the record run.json keeps)."""
    global _chosen
    import torch

    source = "--threads"
    if setting is None and ENV in os.environ:
        setting, source = os.environ[ENV], ENV
    elif setting is None:  # the default; a user's OMP_NUM_THREADS (OpenMP's own setting) stays in force
        omp = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
        setting, source = (int(omp), "OMP_NUM_THREADS") if omp.isdigit() and int(omp) > 0 else (DEFAULT, "default")
    setting = parse_threads(setting, source)
    cores, load = usable_cores(), load_average()
    n = choose_threads(setting, cores, load)
    torch.set_num_threads(n)
    try:  # only possible before the first inter-op parallel work of the process
        torch.set_num_interop_threads(n)
    except RuntimeError:
        pass
    _chosen = {
        "setting": setting,
        "from": source,
        "intra_op": torch.get_num_threads(),
        "interop": torch.get_num_interop_threads(),
        "cores": cores,
        "load_average": None if load is None else round(load, 2),
        "openmp_wait": _wait_policy(),
    }
    return dict(_chosen)


def ensure_threads() -> dict[str, Any]:
    """The thread record of this process, choosing it from EMOTIONLIB_THREADS (or the default) on first use."""
    return dict(_chosen) if _chosen is not None else set_threads(None)


def current_threads() -> dict[str, Any]:
    """What the process runs with now (torch may have been changed since set_threads)."""
    import torch

    rec = ensure_threads()
    rec["intra_op"] = torch.get_num_threads()
    return rec


def worker_init(_worker_id: int) -> None:
    """DataLoader workers decode and crop images: one intra-op thread each (PyTorch's own choice for workers,
    made explicit), under the wait policy they inherit with the environment."""
    import torch

    torch.set_num_threads(1)


class one_thread:
    """Inside: one intra-op thread on the CPU (tiny kernels, e.g. a fusion head's matrices, gain nothing from more
    and pay their synchronisation); the previous count afterwards."""

    def __init__(self, device=None):
        self.cpu = device is None or getattr(device, "type", str(device)) == "cpu"

    def __enter__(self):
        import torch

        self.n = torch.get_num_threads()
        if self.cpu:
            torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.n)
        return False


def add_argument(p) -> None:
    p.add_argument(
        "--threads",
        default=None,
        metavar="N|cores|auto",
        help=f"PyTorch's CPU threads: a number, 'cores' (default: the usable cores) or 'auto' (the cores "
        f"the current load leaves free; faster on a busy machine, not reproducible across loads); "
        f"also ${ENV}",
    )


__all__ = [
    "set_threads",
    "ensure_threads",
    "current_threads",
    "choose_threads",
    "parse_threads",
    "usable_cores",
    "prepare_environment",
    "worker_init",
    "one_thread",
    "ENV",
    "DEFAULT",
    "WAIT_POLICY",
    "SHORT_SPIN",
]
