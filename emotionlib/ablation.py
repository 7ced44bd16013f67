"""The ablation sweep of Table 1, and this run's confusion matrix beside the paper's (Fig. 6).

The paper trains and fine-tunes the whole CNN-RNN for every row of Table 1. That is ten full trainings; here the
fusion variants share one CNN instead - the base run's `checkpoints/stage-main.pt`, the CNN after the
multi-stage training of Sec. 3.2 and before the fusion of Sec. 3.3 - so each row costs a head trained in seconds:

    base CNN -> V_1..V_T of every image, once, over the five crops and their mirrors (cached on disk; the
                mirrors only where the CNN trained on them, data.mirror)
             -> lstm / bilstm / gru / bigru / max / avg heads on the cached features (Eq. 11, RMSprop)
             -> ensemble: the average of the branch classifiers' softmax, no training at all

Only the rows that need other taps train CNN parts: `bigru4` and `bigru6` start from the base CNN with
`fit(..., init_from=...)`, keep its trunk and side branches frozen and train only what cannot be copied - the main
branch, whose FC_5 reads three or five side branches, and for `bigru6` the new branch 0; `softmax` (no branches)
is its own end-to-end `fit`. The base run's own fine-tuned result is a separate row.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_model, read_summary, save_checkpoint, split_parts
from .config import Config, config_diff
from .data import DatasetIndex, make_loader
from .errors import ConfigError, RunFolderError
from .evaluate import CENTRE_CROP, accuracy, crop_chunks, mean_softmax, summarise_predictions
from .experiment import CLAIMS, row_label
from .losses import fusion_loss
from .model import UnifiedCNNRNN, fusion_head, parse_variant
from .paper import TABLE1_VARIANTS
from .threads import one_thread
from .train import optimizer_step
from .utils import (
    autocast,
    derive_seed,
    file_sha256,
    progress_bar,
    read_json,
    relative_path,
    resolve_device,
    write_json,
)

#: Every row of Table 1 this project trains, plus the max / avg aggregation Sec. 1 contrasts with.
SWEEP_VARIANTS = ("softmax", "ensemble", "lstm", "bilstm", "gru", "bigru", "bigru4", "bigru6", "max", "avg")

#: views -> crops per image (FiveCrop order: top-left, top-right, bottom-left, bottom-right, centre; then mirrors).
VIEWS = {"five+mirror": 10, "five": 5, "center": 1}

FEATURE_FORMAT = 1


# ----------------------------------------------------------------------------- cached branch features


@dataclass
class Features:
    """The sequence V_1..V_T (Sec. 3.3) and each branch classifier's logits, for every image and view."""

    V: torch.Tensor  # (N, views, T, D)
    logits: torch.Tensor  # (N, views, T, C)
    targets: torch.Tensor  # (N,)
    keys: list[str]  # the branch keys in sequence order (model.feature_keys): branch1..branch4, main
    classes: list[str]
    paths: list[str]  # relative to the dataset root, in the order of the split
    views: str

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def key_features(self, key: str, view: int | None = None) -> np.ndarray:
        """One branch's V as an (N, D) array: one view, or the mean over all views (view=None)."""
        v = self.V[:, :, self.keys.index(key)]
        return (v.mean(1) if view is None else v[:, view]).numpy()


def _digest(model: UnifiedCNNRNN, prefixes: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.startswith(prefixes):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cnn_digest(model: UnifiedCNNRNN) -> str:
    """A fingerprint of the CNN weights (trunk, branches, main): a cache made by other weights is never reused."""
    return _digest(model, ("trunk.", "branches.", "main."))


def _views(x: torch.Tensor, views: str) -> torch.Tensor:
    """(B, 5, 3, H, W) five crops -> the requested views. The mirrors are those of the training crops' random
    mirroring (data.mirror, ours: the paper names only the corner and centre crops)."""
    if views == "five+mirror":
        return torch.cat([x, x.flip(-1)], dim=1)
    if views == "five":
        return x
    return x[:, CENTRE_CROP : CENTRE_CROP + 1]


def _branch_outputs(model: UnifiedCNNRNN, maps: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(V, logits) of every branch in feature_keys order, stacked, from trunk maps computed once."""
    out = model.heads_from_maps(maps)
    return (
        torch.stack([out[k][0] for k in model.feature_keys], 1).float(),
        torch.stack([out[k][1] for k in model.feature_keys], 1).float(),
    )


def _load_cache(cache: str | os.PathLike | None, key: dict[str, Any]) -> Features | None:
    if cache is None or not Path(cache).exists():
        return None
    try:
        saved = torch.load(cache, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is only a cache: compute it again
        return None
    if saved.get("key") != key:
        return None
    return Features(
        saved["V"],
        saved["logits"],
        saved["targets"],
        list(key["keys"]),
        list(key["classes"]),
        list(key["paths"]),
        key["views"],
    )


def extract_features(
    model: UnifiedCNNRNN,
    index_part: DatasetIndex,
    cfg: Config,
    views: str = "five+mirror",
    *,
    cache: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Features:
    """Branch features V_1..V_T and branch logits of every image of a split, computed once per view.

    `views`: "five+mirror" (10 per image: the five crops of Sec. 4.1 and their mirrors, what the CNN stages train
    on with data.mirror, for training heads), "five" (the five test crops, for five-crop evaluation, and for
    training heads with data.mirror off) or "center". With `cache`, the result is written there
    atomically and reused on the next call as long as the CNN weights, the images, the views and the crop
    geometry are the same (otherwise it is recomputed and replaced).
    """
    return extract_shared({"cnn": model}, index_part, cfg, views, {"cnn": cache}, device=device, progress=progress)[
        "cnn"
    ]


def _folded_trunk(trunk: nn.Module, channels_last: bool) -> nn.Module:
    """A copy of the trunk with each batch norm folded into the convolution before it, for inference only: the
    same function up to float rounding (about 1e-6), without eval-mode batch norm's own pass over every map
    (docs/performance.md)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(trunk).eval()
    for stage in folded.stages:
        mods, out, i = list(stage.convs), [], 0
        while i < len(mods):
            if isinstance(mods[i], nn.Conv2d) and i + 1 < len(mods) and isinstance(mods[i + 1], nn.BatchNorm2d):
                out.append(fuse_conv_bn_eval(mods[i], mods[i + 1]))
                i += 2
            else:
                out.append(mods[i])
                i += 1
        stage.convs = nn.Sequential(*out)
    return folded.to(memory_format=torch.channels_last) if channels_last else folded


@torch.inference_mode()
def extract_shared(
    models: Mapping[str, UnifiedCNNRNN],
    index_part: DatasetIndex,
    cfg: Config,
    views: str = "five+mirror",
    caches: Mapping[str, str | os.PathLike | None] | None = None,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Features]:
    """extract_features for several CNNs whose trunks are identical (the sweep's `bigru4` and `bigru6` copy the
    base trunk frozen): the trunk, most of the cost, runs once per batch for all of them. Each model's cache is
    checked first; only the missing ones are computed."""
    if views not in VIEWS:
        raise ConfigError(f"views={views!r}: choose one of {', '.join(VIEWS)}")
    caches = dict(caches or {})
    paths = [relative_path(x.path, index_part.root) for x in index_part.samples]
    keys = {
        n: {
            "format": FEATURE_FORMAT,
            "cnn": cnn_digest(m),
            "views": views,
            "paths": paths,
            "classes": list(index_part.classes),
            "resize": cfg.data.resize,
            "crop": cfg.data.crop,
            "keys": m.feature_keys,
        }
        for n, m in models.items()
    }
    out = {n: _load_cache(caches.get(n), keys[n]) for n in models}
    todo = [n for n in models if out[n] is None]
    if not todo:
        return out
    if len({_digest(models[n], ("trunk.",)) for n in todo}) > 1:
        raise ConfigError(f"models {', '.join(todo)} do not share one trunk; extract their features one by one")
    dev = resolve_device(cfg.train.device) if device is None else torch.device(device)
    for n in todo:
        models[n].to(dev).eval()
    trunk = _folded_trunk(models[todo[0]].trunk, cfg.train.channels_last)
    loader = make_loader(index_part, index_part.classes, cfg, train=False)
    parts: dict[str, list] = {n: [] for n in todo}
    ys = []
    bar = progress_bar(total=len(loader), desc=f"features {views}", enabled=progress)
    for x, y, _ in loader:
        x = _views(x, views).to(dev)
        b, n_views = x.shape[:2]
        outs: dict[str, list] = {n: [] for n in todo}
        with autocast(dev, cfg.train.amp):  # the trunk in cache-sized chunks on the CPU (evaluate.crop_chunks)
            for chunk in crop_chunks(x.reshape(b * n_views, *x.shape[2:]), dev, cfg.train.channels_last):
                maps = trunk(chunk, 4)
                for n in todo:
                    outs[n].append(_branch_outputs(models[n], maps))
        for n in todo:
            v, logits = (torch.cat([o[j] for o in outs[n]]) for j in (0, 1))
            parts[n].append(
                (v.reshape(b, n_views, *v.shape[1:]).cpu(), logits.reshape(b, n_views, *logits.shape[1:]).cpu())
            )
        ys.append(y)
        bar.update(1)
    bar.close()
    targets = torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long)
    for n in todo:
        k = keys[n]
        out[n] = Features(
            torch.cat([p[0] for p in parts[n]]),
            torch.cat([p[1] for p in parts[n]]),
            targets,
            list(k["keys"]),
            list(k["classes"]),
            paths,
            views,
        )
        if caches.get(n) is not None:
            save_checkpoint(Path(caches[n]), {"key": k, "V": out[n].V, "logits": out[n].logits, "targets": targets})
    return out


# ----------------------------------------------------------------------------- heads on cached features


def make_head(variant: str, input_size: int, cfg: Config) -> torch.nn.Module | None:
    """The fusion head of a variant (Sec. 3.3), or None for the ensemble (nothing to train)."""
    fusion, _ = parse_variant(variant)
    if fusion != "softmax":
        return fusion_head(fusion, input_size, cfg.model)
    raise ConfigError(f"variant {variant!r} has no fusion head: it is trained end to end (run_sweep does that)")


def ensemble_probs(feats: Features) -> np.ndarray:
    """Table 1's "5 Branches + Ensemble": the mean of the branch classifiers' softmax, then over the views."""
    return F.softmax(feats.logits.float(), dim=-1).mean(2).mean(1).numpy()


@torch.inference_mode()
def head_probs(
    head: torch.nn.Module, feats: Features, device: str | torch.device = "cpu", batch_size: int = 256
) -> np.ndarray:
    """Softmax of the head on every view, averaged over the views (five-crop evaluation)."""
    head = head.to(device).eval()
    n, v, t, d = feats.V.shape
    out = []
    for i in range(0, n, batch_size):
        seq = feats.V[i : i + batch_size].reshape(-1, t, d).to(device)
        out.append(mean_softmax(head(seq), len(seq) // v, v))
    return torch.cat(out).numpy() if out else np.zeros((0, head_classes(head)))


def head_classes(head: torch.nn.Module) -> int:
    return head.fc.out_features


def train_head(
    variant: str,
    features: Mapping[str, Features],
    cfg: Config,
    *,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """Train a variant's fusion head on cached features; evaluate it on features["test"] (and "val").

    As the fusion stage of `fit` (Sec. 4.1): RMSprop at `train.fusion_lr` for `train.fusion_epochs`, the loss of
    Eq. 11 (cross-entropy + lambda * ||theta||_2 over the recurrent weights), the same staircase schedule, and
    each epoch shows every training image once, in one of its cached views drawn at random (the random
    crop, mirrored with data.mirror, of the CNN stages). The CNN is frozen: that is the difference from the paper. Returns
    (head, metrics); the ensemble returns (None, metrics).
    """
    train = features["train"]
    fusion, n_branches = parse_variant(variant)
    if fusion == "softmax":
        make_head(variant, 0, cfg)  # raises: no head to train
    if len(train.keys) != n_branches:
        raise ConfigError(
            f"variant {variant!r} reads {n_branches} branches but the features hold {len(train.keys)} "
            f"({', '.join(train.keys)}); extract them from a CNN with {n_branches} branches"
        )
    dev = resolve_device(cfg.train.device) if device is None else torch.device(device)
    with one_thread(dev):  # a head's matrices are tiny: more threads only synchronise (docs/performance.md)
        return _train_head(variant, features, cfg, dev, progress)


def _train_head(
    variant: str, features: Mapping[str, Features], cfg: Config, dev: torch.device, progress: bool
) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    train = features["train"]
    t = cfg.train
    history: list[dict[str, Any]] = []
    torch.manual_seed(derive_seed(t.seed, "head", variant))
    head = make_head(variant, train.V.shape[-1], replace(cfg, model=replace(cfg.model, num_classes=len(train.classes))))
    if head is not None:
        head = head.to(dev)
        opt = torch.optim.RMSprop(head.parameters(), lr=t.fusion_lr)  # Torch7's defaults are PyTorch's
        sched = torch.optim.lr_scheduler.StepLR(opt, t.lr_step, t.lr_gamma)
        g = torch.Generator().manual_seed(derive_seed(t.seed, "head-batches", variant))
        n, n_views = train.V.shape[:2]
        bar = progress_bar(total=t.fusion_epochs, desc=f"{variant:>10} head", enabled=progress)
        for epoch in range(t.fusion_epochs):
            head.train()
            perm, view = torch.randperm(n, generator=g), torch.randint(n_views, (n,), generator=g)
            loss_sum = correct = 0.0
            for i in range(0, n, t.batch_size):
                idx = perm[i : i + t.batch_size]
                seq, y = train.V[idx, view[idx]].to(dev), train.targets[idx].to(dev)
                logits = head(seq)
                loss, _ = fusion_loss(logits, y, head.weight_matrices(), t.reg_lambda, t.reg_squared)
                optimizer_step([opt], loss, f"the loss of the {variant} head")
                loss_sum += float(loss.detach()) * len(idx)
                correct += float((logits.argmax(1) == y).sum())
            row = {
                "epoch": epoch + 1,
                "lr": opt.param_groups[0]["lr"],
                "train_loss": loss_sum / n,
                "train_acc": correct / n,
            }
            sched.step()
            if "val" in features and len(features["val"]):
                row["val_acc"] = accuracy(head_probs(head, features["val"], dev), features["val"].targets)
            history.append(row)
            bar.update(1)
        bar.close()
        head = head.cpu().eval()
    metrics = evaluate_head(head, features)
    metrics["history"] = history
    return head, metrics


def evaluate_head(head: torch.nn.Module | None, features: Mapping[str, Features]) -> dict[str, Any]:
    """Test metrics of a head (None: the ensemble), view-averaged: accuracy, per-class TPR, confusion."""
    test = features["test"]
    p = ensemble_probs(test) if head is None else head_probs(head, test)
    s = summarise_predictions(test.targets.numpy(), p, test.classes)
    m = {
        "test_accuracy": s["accuracy"],
        "mean_tpr": s["mean_tpr"],
        "per_class_tpr": s["per_class_tpr"],
        "confusion": s["confusion"],
        "n_test": len(test),
    }
    val = features.get("val")
    if val is not None and len(val):
        pv = ensemble_probs(val) if head is None else head_probs(head, val)
        m["val_accuracy"] = accuracy(pv, val.targets)
    else:
        m["val_accuracy"] = float("nan")
    return m


# ----------------------------------------------------------------------------- the sweep


@dataclass
class BaseRun:
    """A training run folder whose CNN the sweep shares (`fit(..., until="main")` is enough)."""

    path: Path
    cfg: Config
    classes: list[str]
    data_root: Path

    @property
    def stage_main(self) -> Path:
        return self.path / "checkpoints" / "stage-main.pt"

    @property
    def split_csv(self) -> Path:
        return self.path / "split.csv"

    @property
    def fingerprint(self) -> str:
        """The stage-main.pt file's hash: a sweep folder belongs to exactly one base CNN."""
        return file_sha256(self.stage_main)

    @property
    def label(self) -> str:
        """The run's name without this machine's absolute path, e.g. `smoke/train`."""
        return "/".join(self.path.resolve().parts[-2:])

    @classmethod
    def open(cls, path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> "BaseRun":
        path = Path(path)
        for need in ("checkpoints/stage-main.pt", "config.json", "run.json", "split.csv"):
            if not (path / need).exists():
                raise RunFolderError(
                    f"base run {path} has no {need}; train its CNN first with fit(cfg, data, {path}, until='main')"
                )
        meta = read_json(path / "run.json")
        cfg = Config.from_dict(read_json(path / "config.json")["config"])
        root = Path(data_dir) if data_dir is not None else Path(meta["data_root"])
        return cls(path, cfg, list(meta["classes"]), root)

    def parts(self) -> dict[str, DatasetIndex]:
        """The base run's train / val / test split: every variant of the sweep is scored on the same images."""
        return split_parts(self.path, self.data_root, self.classes, self.cfg.data.max_pixels)


def load_cnn(checkpoint: str | os.PathLike) -> tuple[UnifiedCNNRNN, Config]:
    """The model and config stored in one checkpoint file (e.g. a run's stage-main.pt)."""
    return load_model(checkpoint)[:2]


def _check_cfg(cfg: Config, base: Config) -> None:
    diff = [k for k in config_diff(cfg, base) if k.startswith(("model.", "data.")) and k != "model.variant"]
    if diff:
        raise ConfigError(
            f"cfg differs from the base run's in {', '.join(diff[:5])}; the sweep reuses the base "
            "CNN and its data geometry, so only train.* settings may change"
        )


def split_views(cfg: Config) -> dict[str, str]:
    """Which views each split gets: the training split the crops the CNN stages train on (the five and, with
    data.mirror, their mirrors), test and val the five evaluated crops."""
    return {"train": "five+mirror" if cfg.data.mirror else "five", "val": "five", "test": "five"}


def shared_features(
    cnns: Mapping[str, tuple[UnifiedCNNRNN, Path]],
    parts: Mapping[str, DatasetIndex],
    cfg: Config,
    progress: bool = False,
) -> dict[str, dict[str, Features]]:
    """Features of every split for CNNs sharing one trunk, cached in each CNN's folder (tag -> split -> Features)."""
    out: dict[str, dict[str, Features]] = {tag: {} for tag in cnns}
    groups: dict[str, list[str]] = {}  # CNNs with the same trunk weights share a pass
    for tag, (m, _) in cnns.items():
        groups.setdefault(_digest(m, ("trunk.",)), []).append(tag)
    for tags in groups.values():
        models = {tag: cnns[tag][0] for tag in tags}
        for split, views in split_views(cfg).items():
            if parts[split].samples:
                caches = {tag: cnns[tag][1] / f"{split}.pt" for tag in tags}
                for tag, f in extract_shared(models, parts[split], cfg, views, caches, progress=progress).items():
                    out[tag][split] = f
    return out


def _finished(folder: Path, base: "BaseRun") -> dict[str, Any] | None:
    done = folder / "metrics.json"
    if done.exists():
        m = read_json(done)
        if m.get("base_fingerprint") == base.fingerprint:
            return m
    return None


def _fit_variant(
    vcfg: Config, data_dir, out: Path, base: BaseRun, progress: bool, until: str | None, init: bool
) -> dict:
    from .train import fit

    return fit(
        vcfg,
        data_dir,
        out,
        resume=True,
        split_csv=base.split_csv,
        progress=progress,
        init_from=base.stage_main if init else None,
        until=until,
    )


def run_sweep(
    base_run: str | os.PathLike,
    data_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    variants: Sequence[str] = SWEEP_VARIANTS,
    cfg: Config | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Table 1 on this run's data: one row per variant, plus the base run's own fine-tuned result.

    `base_run`: a training folder with at least `checkpoints/stage-main.pt`; its split.csv is every variant's
    split. `cfg`: training settings for the heads and the extra CNNs (default: the base run's configuration; its
    model and data sections must be the base's). Writes out_dir/ablation.csv, out_dir/sweep.json and
    out_dir/<variant>/metrics.json; finished variants and cached features are reused.
    """
    base = BaseRun.open(base_run, data_dir)
    data_dir = base.data_root
    # the class count comes from the data (fit sets it), so a profile config may leave it at its default
    cfg = base.cfg if cfg is None else replace(cfg, model=replace(cfg.model, num_classes=base.cfg.model.num_classes))
    _check_cfg(cfg, base.cfg)
    for v in variants:
        parse_variant(v)
    out = Path(out_dir)
    meta = {"base_cnn": base.label, "base_fingerprint": base.fingerprint}
    if (out / "sweep.json").exists():
        old = read_json(out / "sweep.json")
        if old.get("base_fingerprint") != meta["base_fingerprint"]:
            raise RunFolderError(
                f"{out} holds a sweep of another base CNN (of {old.get('base_cnn')}, since retrained "
                "or replaced); choose another out_dir, or delete it to sweep again"
            )
    else:
        write_json(out / "sweep.json", meta)  # claims the folder for this base before anything is trained
    n_base = base.cfg.model.n_branches
    todo = [v for v in variants if _finished(out / v, base) is None]
    parts = base.parts() if todo else {}
    vcfg = {v: replace(cfg, model=replace(cfg.model, variant=v)) for v in variants}

    # 1. the CNNs: the base's for the rows with its taps; for other taps a copy of it that trains only the parts
    #    the base lacks (the main branch, whose FC_5 is new, and the new branch 0), so its trunk stays the base's,
    #    bit for bit
    cnns: dict[str, tuple[UnifiedCNNRNN, Path]] = {}
    seconds: dict[str, float] = {}
    for v in todo:
        fusion, n = parse_variant(v)
        if fusion == "softmax":
            continue
        if n == n_base:
            if "base" not in cnns:
                cnns["base"] = (load_cnn(base.stage_main)[0], out / "features")
        elif v not in cnns:
            t0 = time.perf_counter()
            _fit_variant(vcfg[v], data_dir, out / v / "cnn", base, progress, until="main", init=True)
            cnns[v] = (load_cnn(out / v / "cnn" / "checkpoints" / "stage-main.pt")[0], out / v / "features")
            seconds[v] = time.perf_counter() - t0
    # 2. their features: one pass over the images, the shared trunk run once per batch
    t0 = time.perf_counter()
    feats = shared_features(cnns, parts, cfg, progress)
    feature_seconds = round(time.perf_counter() - t0, 2)
    # 3. one row per variant
    rows = []
    for v in variants:
        m = _finished(out / v, base)
        if m is None:
            m = _run_variant(
                v, base, data_dir, out / v, vcfg[v], feats.get(v) or feats.get("base"), progress, seconds.get(v, 0.0)
            )
        rows.append(_table_row(m))
    if (base.path / "metrics.json").exists():
        rows.append(_finetuned_row(base))
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    from .figures import save_table

    save_table(df, out / "ablation.csv", index=False)
    if todo:
        write_json(
            out / "sweep.json",
            {
                **meta,
                "variants": list(variants),
                "profile": cfg.profile,
                "trained_now": todo,
                "feature_seconds": feature_seconds,
                "views": split_views(cfg),
            },
        )
    return df


def _run_variant(
    variant: str,
    base: BaseRun,
    data_dir: Path,
    folder: Path,
    vcfg: Config,
    feats: dict[str, Features] | None,
    progress: bool,
    cnn_seconds: float,
) -> dict[str, Any]:
    """One row: the end-to-end `fit` for softmax, otherwise a head on cached features; writes metrics.json."""
    start = time.perf_counter()
    fusion, n_branches = parse_variant(variant)
    if fusion == "softmax":
        # no branches, so nothing to share: trunk and main FC trained end to end in one stage
        r = _fit_variant(vcfg, data_dir, folder / "run", base, progress, until=None, init=False)
        m = {k: r[k] for k in ("test_accuracy", "val_accuracy", "mean_tpr", "per_class_tpr", "confusion", "n_test")}
        trained = "end to end (trunk + main FC, one stage)"
    else:
        head, m = train_head(variant, feats, vcfg, progress=progress)
        if head is not None:
            save_checkpoint(
                folder / "head.pt", {"model": head.state_dict(), "variant": variant, "config": vcfg.to_dict()}
            )
        trained = f"head on the frozen CNN of {base.label}, cached features"
        if n_branches != base.cfg.model.n_branches:
            # fit(init_from=...) retrains every module it could not copy whole: the main branch (FC_5 reads
            # another number of branches) and, for six branches, the new branch 0
            new = (
                "main branch (new FC_5)"
                if n_branches < base.cfg.model.n_branches
                else "new branch 0 and main branch (new FC_5)"
            )
            trained = f"{new} trained on the frozen trunk of {base.label}, then a head on cached features"
    m.update(
        variant=variant,
        table1_row=row_label(variant),
        paper_fi_accuracy=TABLE1_VARIANTS.get(variant),
        trained=trained,
        base_cnn=base.label,
        base_fingerprint=base.fingerprint,
        profile=vcfg.profile,
        classes=base.classes,
        seconds=round(cnn_seconds + time.perf_counter() - start, 2),
    )
    write_json(folder / "metrics.json", m)
    return m


#: The sweep table's columns; accuracies in %. The paper's FI numbers stay in their own column.
TABLE_COLUMNS = (
    "variant",
    "table1_row",
    "this_run_test_acc",
    "this_run_mean_tpr",
    "paper_FI_acc",
    "trained",
    "seconds",
)


def _table_row(m: dict[str, Any]) -> dict[str, Any]:
    paper = m.get("paper_fi_accuracy")
    return {
        "variant": m["variant"],
        "table1_row": m["table1_row"],
        "this_run_test_acc": round(100 * m["test_accuracy"], 2),
        "this_run_mean_tpr": round(100 * m["mean_tpr"], 2),
        "paper_FI_acc": float("nan") if paper is None else paper,
        "trained": m["trained"],
        "seconds": m["seconds"],
    }


def _finetuned_row(base: BaseRun) -> dict[str, Any]:
    """The base run's own result: its fusion trained while the CNN was fine-tuned, as the paper trains."""
    m = read_json(base.path / "metrics.json")
    v = m["variant"]
    seconds = sum(float(r["seconds"]) for r in read_summary(base.path / "summary.csv") if r.get("seconds"))
    return {
        "variant": f"{v} (fine-tuned)",
        "table1_row": row_label(v),
        "this_run_test_acc": round(100 * m["test_accuracy"], 2),
        "this_run_mean_tpr": round(100 * m["mean_tpr"], 2),
        "paper_FI_acc": TABLE1_VARIANTS.get(v, float("nan")),
        "trained": f"the base run {base.label}: multi-stage CNN, then fusion with the CNN fine-tuned (as the paper)",
        "seconds": round(seconds, 2),
    }


def compare_claims(df: pd.DataFrame) -> pd.DataFrame:
    """The frozen-head diagnostic's reading of Sec. 4.3's comparisons (experiment.CLAIMS): one run, no interval, so
    no verdict - only the sign ("higher_here", a strict >). Table 1's verdicts come from experiment.compare."""
    acc = dict(zip(df["variant"], df["this_run_test_acc"]))
    rows = []
    for a, b, what, _ in CLAIMS:
        if a not in acc or b not in acc:
            continue
        pa, pb = TABLE1_VARIANTS.get(a), TABLE1_VARIANTS.get(b)
        paper_diff = None if pa is None or pb is None else round(pa - pb, 2)
        rows.append(
            {
                "comparison": f"{a} vs {b}",
                "claim": what,
                "paper_FI_diff": float("nan") if paper_diff is None else paper_diff,
                "this_run_diff": round(acc[a] - acc[b], 2),
                "higher_here": bool(acc[a] > acc[b]),
            }
        )
    return pd.DataFrame(rows)


# Fig. 6 lives in figures.py (the plots) and evaluate.py (top_confusions); notebook 05 reads it from here.
from .figures import fig6_tpr_table as tpr_table  # noqa: E402
from .figures import paper_confusions, plot_confusions, plot_sweep  # noqa: E402
from .evaluate import cue_errors, top_confusions  # noqa: E402

# ----------------------------------------------------------------------------- inside the trained Bi-GRU (Sec. 3.3)


def _head_accuracy(head, V: torch.Tensor, targets: torch.Tensor) -> float:
    n, views, t, d = V.shape
    with torch.no_grad():
        probs = mean_softmax(head(V.reshape(n * views, t, d)), n, views)
    return 100 * accuracy(probs.numpy(), targets.numpy())


def zeroed_steps(model: UnifiedCNNRNN, feats: Features) -> pd.DataFrame:
    """The accuracy (%) of a trained recurrent head with each V_t of the sequence set to zero at test time (the
    CNN and the head unchanged, class probabilities averaged over the views): how much the fusion depends on
    each level. The first row zeroes nothing."""
    if model.cfg.fusion in ("softmax", "ensemble"):
        raise ConfigError(f"variant {model.cfg.variant!r} has no fusion head over V_1..V_T")
    head = model.head.eval()
    V = feats.V.float()
    rows = [{"zeroed": "none", "test accuracy (%)": _head_accuracy(head, V, feats.targets)}]
    for t, key in enumerate(feats.keys):
        masked = V.clone()
        masked[:, :, t] = 0
        rows.append({"zeroed": f"V_{t + 1} ({key})", "test accuracy (%)": _head_accuracy(head, masked, feats.targets)})
    df = pd.DataFrame(rows)
    df["drop (points)"] = df["test accuracy (%)"].iloc[0] - df["test accuracy (%)"]
    return df.round(2)


def update_gates(model: UnifiedCNNRNN, feats: Features) -> pd.DataFrame:
    """The mean update gate z_t of Eq. 7 at each V_t, per direction, over images, views and hidden units, for
    the paper's GRU cell (model.rnn_cell = "paper"). z near 1 keeps the state from the steps before (V_t barely
    enters, Eq. 9); z near 0 replaces it with the candidate computed from V_t. The backward direction reads
    V_T first; its row is the V_t it reads."""
    rnn = getattr(getattr(model, "head", None), "rnn", None)
    from .model import PaperGRU

    if not isinstance(rnn, PaperGRU):
        raise ConfigError("update gates need the paper's GRU cell (a gru/bigru variant with model.rnn_cell='paper')")
    n, views, T, d = feats.V.shape
    seq = feats.V.float().reshape(n * views, T, d)
    out = {}
    with torch.no_grad():
        for name, cell, order in (("forward", rnn.fwd, range(T)), ("backward", rnn.bwd, range(T - 1, -1, -1))):
            if cell is None:
                continue
            h = seq.new_zeros(seq.shape[0], cell.hidden_size)
            z_mean = [math.nan] * T
            for t in order:
                _, vz, _ = cell.W_v(seq[:, t]).chunk(3, dim=1)
                z_mean[t] = float(torch.sigmoid(vz + cell.W_hz(h)).mean())  # Eq. 7
                h = cell(seq[:, t], h)
            out[f"{name}: mean z_t"] = z_mean
    return pd.DataFrame(out, index=pd.Index([f"V_{t + 1} ({k})" for t, k in enumerate(feats.keys)], name="step")).round(
        3
    )


__all__ = [
    "SWEEP_VARIANTS",
    "VIEWS",
    "split_views",
    "TABLE_COLUMNS",
    "CLAIMS",
    "Features",
    "extract_features",
    "extract_shared",
    "cnn_digest",
    "make_head",
    "train_head",
    "evaluate_head",
    "ensemble_probs",
    "head_probs",
    "BaseRun",
    "load_cnn",
    "shared_features",
    "run_sweep",
    "row_label",
    "compare_claims",
    "plot_sweep",
    "paper_confusions",
    "plot_confusions",
    "top_confusions",
    "tpr_table",
    "cue_errors",
    "zeroed_steps",
    "update_gates",
]
