"""The helpers the notebooks share: one configuration for the whole pipeline, per-branch evaluation, what each
training stage changed, the paper's GRU cell as an nn.GRUCell, and a run's result beside the paper's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .config import PROFILE_SETTINGS
from .pipeline import ensure_data
from .threads import set_threads  # the notebooks' thread parameter (torch imported on use)


#: The test accuracy each profile must beat for the notebooks to print True (config.PROFILE_SETTINGS).
ACCURACY_FLOORS = {name: s["accuracy_floor"] for name, s in PROFILE_SETTINGS.items()}


def pipeline_config(profile: str = "smoke", device: str = "auto", seed: int = 0, **overrides: Any):
    """The one configuration every notebook of a run builds, so notebook 03 resumes what 02 trained.
    CPU profiles run deterministically: a rerun prints the same numbers (nbval compares them)."""
    from .config import get_config

    kw: dict[str, Any] = {"train.device": device, "train.seed": seed}
    if PROFILE_SETTINGS.get(profile, {}).get("deterministic_notebooks"):
        kw["train.deterministic"] = True
    return get_config(profile, **{**kw, **overrides})


def open_stage_model(run_dir: str | os.PathLike, checkpoint: str = "stage-main.pt", device: str = "cpu"):
    """(model, cfg, classes) from one checkpoint of a training run folder, e.g. after `fit(..., until="main")`."""
    from .checkpoint import load_model
    from .utils import read_json

    run_dir = Path(run_dir)
    model, cfg, _ = load_model(run_dir / "checkpoints" / checkpoint, device)
    return model, cfg, list(read_json(run_dir / "run.json")["classes"])


def branch_accuracy(run_dir: str | os.PathLike, checkpoint: str = "stage-main.pt", device: str = "cpu"):
    """Each branch's own classifier (Sec. 3.2) on the run's test and validation splits, five-crop averaged, from one
    pass of the network (evaluate.predict_all). From stage-main.pt this is each branch as its own stage left it
    (it is frozen afterwards); from model.pt, after the fusion stage fine-tuned the CNN under it.
    Returns a DataFrame indexed by branch with columns test_acc, val_acc, n_test, n_val."""
    import pandas as pd

    from .checkpoint import split_parts
    from .data import make_loader
    from .evaluate import accuracy, predict_all
    from .utils import resolve_device

    dev = resolve_device(device)
    model, cfg, classes = open_stage_model(run_dir, checkpoint, dev)
    parts = split_parts(run_dir, classes=classes)
    rows = {k: {} for k in model.feature_keys}
    for split in ("test", "val"):
        if not parts[split].samples:
            continue
        _, per_key, y, _ = predict_all(model, make_loader(parts[split], classes, cfg, train=False), dev, cfg.train.amp)
        for k in model.feature_keys:
            rows[k][f"{split}_acc"] = accuracy(per_key[k], y)
            rows[k][f"n_{split}"] = len(y)
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "branch"
    return df


def stage_changes(run_dir: str | os.PathLike, include_fusion: bool = False):
    """Which modules each training stage changed: the largest absolute change of any weight or batch-norm
    statistic between consecutive stage checkpoints (0.0 exactly: frozen). Rows are stages in training order,
    columns the modules (trunk stages, branches, main, head). The first stage is compared with the seeded
    initialisation that fit() starts from."""
    import pandas as pd
    import torch

    from .checkpoint import load_checkpoint
    from .config import Config
    from .model import UnifiedCNNRNN
    from .train import all_stages
    from .utils import derive_seed

    run_dir = Path(run_dir)
    first = load_checkpoint(run_dir / "checkpoints" / "stage-main.pt")
    cfg = Config.from_dict(first["config"])
    torch.manual_seed(derive_seed(cfg.train.seed, "init"))  # the same draw as fit(): the untrained model
    init = UnifiedCNNRNN(cfg.model)
    prev = {k: v.float() for k, v in init.state_dict().items()}
    stages = [s.name for s in all_stages(init) if s.name != "fusion" or include_fusion]
    rows = {}
    for name in stages:
        path = run_dir / "checkpoints" / ("model.pt" if name == "fusion" else f"stage-{name}.pt")
        state = {k: v.float() for k, v in load_checkpoint(path)["model"].items()}
        row: dict[str, float] = {}
        for k, v in state.items():
            if k.endswith("num_batches_tracked"):
                continue  # a counter, not a weight
            mod = _module_of(k)
            row[mod] = max(row.get(mod, 0.0), float((v - prev[k]).abs().max()))
        rows[name] = row
        prev = state
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "stage"
    return df


def _module_of(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "trunk":
        return f"trunk{int(parts[2]) + 1}"  # trunk.stages.0.convs... -> trunk1
    if parts[0] == "branches":
        return parts[1]
    return parts[0]  # main, head


def paper_cell_as_torch(cell):
    """An nn.GRUCell holding the same weights as a PaperGRUCell (Eq. 6-9), so the two can be run side by side.

    PyTorch orders the gates (r, z, n) and has two bias vectors; the paper's biases go into bias_ih and bias_hh
    is zero. Both update h_t = z * h_{t-1} + (1 - z) * h~_t (Eq. 9); they differ only in Eq. 8, where nn.GRU
    computes r * (W_hh h_{t-1}) instead of W_hh (r * h_{t-1}).
    """
    import torch
    from torch import nn

    torch_cell = nn.GRUCell(cell.W_v.in_features, cell.hidden_size)
    with torch.no_grad():
        torch_cell.weight_ih.copy_(cell.W_v.weight)  # [W_vr; W_vz; W_vh]: the same (r, z, n) order
        torch_cell.bias_ih.copy_(cell.W_v.bias)
        torch_cell.weight_hh.copy_(torch.cat([cell.W_hr.weight, cell.W_hz.weight, cell.W_hh.weight]))
        torch_cell.bias_hh.zero_()
    return torch_cell


def skipped_frame(index):
    """The files a loader left out, with why, as a DataFrame (paths relative to the dataset folder)."""
    import pandas as pd

    from .utils import relative_path

    rows = [{"path": relative_path(p, index.root), "reason": reason} for p, reason in index.skipped]
    return pd.DataFrame(rows, columns=["path", "reason"])


def result_table(run_dir: str | os.PathLike):
    """This run's test accuracy beside Table 1's for the same variant, one row each, with what it was measured on
    (so a synthetic-data number is never read as an FI number)."""
    import pandas as pd

    import numpy as np

    from .paper import FI_SPLIT, FIG6_OURS, TABLE1_ROW, TABLE1_VARIANTS
    from .utils import read_json

    run_dir = Path(run_dir)
    m = read_json(run_dir / "metrics.json")
    d = data_description(run_dir)
    v = m["variant"]
    rows = [
        {
            "source": "this run",
            "model": TABLE1_ROW.get(v, v),
            "dataset": d["dataset"],
            "profile": d["profile"],
            "test images": m["n_test"],
            "accuracy (%)": round(100 * m["test_accuracy"], 2),
            "mean TPR (%)": round(100 * m["mean_tpr"], 2),
        }
    ]
    if v in TABLE1_VARIANTS:
        # mean TPR: the diagonal of the paper's Fig. 6, which shows the 5-branch Bi-GRU only
        tpr = round(100 * float(np.diag(FIG6_OURS).mean()), 2) if v in ("bigru", "bigru5") else None
        rows.append(
            {
                "source": "paper, Table 1 / Fig. 6",
                "model": TABLE1_ROW[v],
                "dataset": "FI",
                "profile": "paper",
                "test images": FI_SPLIT["test"],
                "accuracy (%)": TABLE1_VARIANTS[v],
                "mean TPR (%)": tpr,
            }
        )
    return pd.DataFrame(rows)


def data_description(run_dir: str | os.PathLike) -> dict[str, Any]:
    """What a training run was trained on, in words a reader can check: the dataset's folder name, whether it is
    the built-in synthetic data, the profile, the device and the split sizes (no absolute paths)."""
    from .utils import read_json

    run_dir = Path(run_dir)
    meta = read_json(run_dir / "run.json")
    cfg = read_json(run_dir / "config.json")["config"]
    root = Path(meta["data_root"])
    synthetic = (root / "synth_meta.json").exists()
    out = {
        "dataset": "built-in synthetic data (emotionlib.synth)" if synthetic else f"the dataset in {root.name}/",
        "synthetic": synthetic,
        "profile": cfg["profile"],
        "variant": cfg["model"]["variant"],
        "classes": len(meta["classes"]),
    }
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        m = read_json(metrics)
        out.update(device=m["device"], n_train=m["n_train"], n_val=m["n_val"], n_test=m["n_test"])
    return out


def stage_lines(run_dir: str | os.PathLike, stages: Sequence[str] | None = None) -> list[str]:
    """One line per training stage of a run folder's summary.csv (epochs, last training loss and accuracy, last
    validation accuracy): what a notebook prints after fit(..., progress=False), readable as plain text
    where a progress bar would be saved stuck at its first frame."""
    import math

    from .checkpoint import read_summary

    rows = read_summary(Path(run_dir) / "summary.csv")
    out = []
    for name in dict.fromkeys(r["stage"] for r in rows):
        if stages is not None and name not in stages:
            continue
        part = [r for r in rows if r["stage"] == name]
        last = part[-1]
        val = float(last["val_acc"]) if last.get("val_acc") not in (None, "") else math.nan
        out.append(
            f"{name:>8}: {len(part)} epochs, train loss {float(last['train_loss']):.3f}, "
            f"train acc {100 * float(last['train_acc']):.1f} %, val acc "
            f"{'-' if math.isnan(val) else f'{100 * val:.1f} %'}"
        )
    return out


__all__ = [
    "ACCURACY_FLOORS",
    "pipeline_config",
    "ensure_data",
    "open_stage_model",
    "branch_accuracy",
    "stage_changes",
    "paper_cell_as_torch",
    "skipped_frame",
    "result_table",
    "data_description",
    "stage_lines",
    "set_threads",
]
