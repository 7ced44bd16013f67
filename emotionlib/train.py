"""Multi-stage, multi-task training (Sec. 3.2 and 4.1) and the run folder it writes.

    branch 1 (+ trunk stage 1) -> branch 2 (+ trunk stage 2, branch 1 frozen) -> ... -> main branch
    -> fusion head (RMSprop) while the CNN is fine-tuned with a smaller learning rate.

A run folder holds config.json, run.json, split.csv, skipped.csv, summary.csv (one row per stage and epoch),
metrics.json, predictions.csv and checkpoints/ (last.pt to resume, one file per finished stage, model.pt).
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import __version__, distributed
from .config import Config, config_diff, validate
from .data import (
    DatasetIndex,
    PairBatchSampler,
    ShuffleBatchSampler,
    make_loader,
    make_split,
    open_dataset,
    read_split,
    write_split,
)
from .distributed import Dist
from .checkpoint import (
    RunFolder,
    load_checkpoint,
    load_model,
    load_model_state,
    load_run,
    read_summary,
    save_checkpoint,
)
from .errors import CheckpointError, ConfigError, RunFolderError, TrainingError
from .evaluate import accuracy, predict_all, predict_probs, summarise_predictions
from .losses import fusion_loss, multitask_loss
from .model import Stage, UnifiedCNNRNN
from .threads import current_threads
from .utils import autocast, derive_seed, folder_lock, progress_bar, read_json, relative_path, write_csv, write_json


# ----------------------------------------------------------------------------- seeds and determinism


def set_deterministic(enabled: bool) -> None:
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: cuDNN's fastest kernels, chosen once per shape


# ----------------------------------------------------------------------------- stages


def set_trainable(model: UnifiedCNNRNN, modules: list[nn.Module]) -> None:
    """Freeze everything, then thaw `modules`. Frozen parts also run in eval mode, so their batch-norm statistics
    stay bit-identical: "the second branch training will begin with the first branch fixed" (Sec. 4.1)."""
    model.requires_grad_(False)
    model.eval()
    for m in modules:
        m.requires_grad_(True)
        m.train()


def fusion_stage(model: UnifiedCNNRNN, cfg: Config | None = None) -> Stage | None:
    """The last stage (Sec. 3.3, 4.1): the fusion head with RMSprop while the CNN is fine-tuned. The rows of Table 1
    without a head (`softmax`, `ensemble`) get the same stage with nothing but the fine-tuning (ours, so every row
    has one training budget): the CNN at `train.finetune_lr` under Eq. 5 of the classifiers the variant predicts
    with (ensemble: all branches and main; softmax: main). With finetune_lr 0 they have no such stage."""
    if model.head is not None:
        return Stage("fusion", [], ["fusion"])
    if cfg is None or cfg.train.finetune_lr <= 0:
        return None
    return Stage("fusion", [], model.feature_keys if model.cfg.fusion == "ensemble" else ["main"])


def all_stages(model: UnifiedCNNRNN, cfg: Config | None = None) -> list[Stage]:
    stages = model.cnn_stages()
    fs = fusion_stage(model, cfg)
    return stages + [fs] if fs is not None else stages


def make_optimizers(
    model: UnifiedCNNRNN, stage: Stage, cfg: Config, frozen: set[str] = frozenset()
) -> tuple[list[torch.optim.Optimizer], list[nn.Module]]:
    """CNN stages: `train.optimizer` at `train.lr` (the paper profile: SGD, lr 1e-3, Sec. 4.1; the smoke profile:
    Adam). Fusion: RMSprop at `train.fusion_lr` for the head (1e-4), and the same `train.optimizer` at
    `train.finetune_lr` to fine-tune the CNN ("the CNN part will be fine-tuned with a relatively small learning
    rate"); a variant without a head (softmax, ensemble) only fine-tunes."""
    t = cfg.train
    if stage.name != "fusion":
        mods = [m for name, m in model.stage_modules(stage) if name not in frozen]
        params = [p for m in mods for p in m.parameters()]
        return [cnn_optimizer(params, t.lr, t)], mods
    # Torch7's rmsprop defaults (alpha 0.99, eps 1e-8) are PyTorch's too: "initialized by the default setting"
    opts: list[torch.optim.Optimizer] = []
    mods: list[nn.Module] = []
    if model.head is not None:
        opts, mods = [torch.optim.RMSprop(model.head.parameters(), lr=t.fusion_lr)], [model.head]
    if t.finetune_lr > 0:
        cnn = model.cnn_modules()
        opts.append(cnn_optimizer([p for m in cnn for p in m.parameters()], t.finetune_lr, t))
        mods += cnn
    return opts, mods


def cnn_optimizer(params, lr: float, t) -> torch.optim.Optimizer:
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)


def stage_epochs(stage: Stage, cfg: Config) -> int:
    """`train.fusion_epochs` for the fusion stage; `train.stage_epochs` per CNN stage, except the one CNN stage of
    the variant without branches, which lasts `train.softmax_stages` stages (ours: 5, the five greedy stages of the
    5-branch model, so the `softmax` row of Table 1 sees as many epochs as the others)."""
    if stage.name == "fusion":
        return cfg.train.fusion_epochs
    if cfg.model.n_branches == 0:  # its one CNN stage, the main branch on the whole trunk
        return cfg.train.stage_epochs * cfg.train.softmax_stages
    return cfg.train.stage_epochs


# ----------------------------------------------------------------------------- one epoch


def is_head_stage(model: UnifiedCNNRNN, stage: Stage) -> bool:
    """The fusion stage of a variant with a fusion head: trained on Eq. 11, not on Eq. 5."""
    return stage.name == "fusion" and model.head is not None


class StageStep(nn.Module):
    """The forward pass one stage trains, as a module of its own: what DistributedDataParallel wraps (its gradient
    hooks are armed in forward(), so calling model.extract directly would bypass them) and torch.compile compiles.
    CNN stages: {head: (V, logits)} of the stage's heads; the fusion stage: the variant's final logits."""

    def __init__(self, model: UnifiedCNNRNN, stage: Stage):
        super().__init__()
        self.model = model
        self.heads = None if is_head_stage(model, stage) else list(stage.heads)

    def forward(self, x: torch.Tensor):
        return self.model(x) if self.heads is None else self.model.extract(x, self.heads)


def optimizer_step(optimizers: list[torch.optim.Optimizer], loss: torch.Tensor, what: str = "the loss") -> None:
    """One step of every optimiser on `loss`; a loss that is not finite stops training (TrainingError) before it
    reaches the weights."""
    if not torch.isfinite(loss):
        raise TrainingError(f"{what} became {float(loss.detach())}")
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()


def train_one_epoch(
    model: UnifiedCNNRNN,
    stage: Stage,
    loader: DataLoader,
    optimizers: list[torch.optim.Optimizer],
    cfg: Config,
    device: torch.device,
    bar=None,
    step: nn.Module | None = None,
    dist: Dist | None = None,
) -> dict[str, float]:
    """One pass over the training split. CNN stages use the multi-task loss of Eq. 5 on every head the stage
    trains; the fusion stage uses Eq. 11. `step`: the StageStep to run (wrapped in DDP or compiled; default a
    plain one); with `dist`, the row sums every rank's images."""
    t = cfg.train
    step = StageStep(model, stage) if step is None else step
    sums: dict[str, float] = {}
    n_seen = correct = 0
    start = time.perf_counter()
    for x, y, _ in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, t.amp):
            if is_head_stage(model, stage):
                logits = step(x)
                loss, parts = fusion_loss(logits, y, model.head.weight_matrices(), t.reg_lambda, t.reg_squared)
            else:
                out = step(x)
                loss, parts = 0.0, {}
                for k in stage.heads:
                    v, logits = out[k]
                    lk, pk = multitask_loss(logits, v, y, t.margin, t.contrastive_weight, t.contrastive_normalize)
                    loss = loss + lk
                    for name, val in pk.items():
                        parts[name] = parts.get(name, 0.0) + val
        optimizer_step(optimizers, loss)
        b = y.shape[0]
        n_seen += b
        correct += int((logits.argmax(1) == y).sum())
        sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * b
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * b
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    seconds = time.perf_counter() - start
    if dist is not None and dist.enabled:  # the epoch of all ranks together: their images, losses, hits
        keys = sorted(sums)
        total = dist.all_sum([n_seen, correct, *(sums[k] for k in keys)], device)
        n_seen, correct, sums = int(total[0]), total[1], dict(zip(keys, total[2:]))
    row = {f"train_{k}": v / max(n_seen, 1) for k, v in sums.items()}
    row.update(
        train_acc=correct / max(n_seen, 1),
        seconds=round(seconds, 3),
        images_per_s=round(n_seen / seconds, 2) if seconds > 0 else float("nan"),
    )
    return row


# ----------------------------------------------------------------------------- the whole run


@dataclass
class RunData:
    index: DatasetIndex
    train: DatasetIndex
    val: DatasetIndex
    test: DatasetIndex


def prepare_data(
    cfg: Config, data: str | os.PathLike | None, run: RunFolder, split_csv: str | os.PathLike | None, progress: bool
) -> RunData:
    """Scan the dataset (or reuse the run's split), write split.csv and skipped.csv into the run folder."""
    split_path = run.path / "split.csv"
    meta_path = run.path / "run.json"
    if split_path.exists() and meta_path.exists():  # resuming: the split never moves
        root = Path(read_json(meta_path)["data_root"])
        index = read_split(split_path, root=root, max_pixels=cfg.data.max_pixels)
    elif split_csv is not None:
        if data is None:
            raise ConfigError("--split needs --data: the folder its paths are relative to")
        index = read_split(split_csv, root=data, max_pixels=cfg.data.max_pixels)
    else:
        if data is None:
            raise ConfigError("--data is required for a new run")
        index = open_dataset(data, max_pixels=cfg.data.max_pixels, progress=progress)
        splits = make_split(index.targets, cfg.data.split, cfg.data.split_seed)
        for s, sp in zip(index.samples, splits):
            s.split = sp
    if not split_path.exists():
        write_split(index, [s.split for s in index.samples], split_path)
    if not (run.path / "skipped.csv").exists():
        index.write_skipped(run.path / "skipped.csv")
    parts = index.parts()  # a part may be empty on tiny data (5 % of 10 images)
    if len(parts["train"].samples) < cfg.train.batch_size:
        raise ConfigError(
            f"the training split has {len(parts['train'].samples)} images, fewer than one batch "
            f"(train.batch_size={cfg.train.batch_size}); use more data or a smaller batch"
        )
    return RunData(index, parts["train"], parts["val"], parts["test"])


def fit(
    cfg: Config,
    data: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    split_csv: str | os.PathLike | None = None,
    progress: bool = True,
    init_from: str | os.PathLike | None = None,
    until: str | None = None,
    init_stages: list[str] | None = None,
) -> dict[str, Any]:
    """Train `cfg.model.variant` stage by stage into the run folder `out`; return its metrics.

    `init_from`: a finished run whose CNN weights (trunk, branches, main) start this run; its finished stages
    are skipped where the architectures agree (the shared CNN stages of Table 1's protocol and the ablation sweep);
    `init_stages` limits the copy to the CNN stages of these names (init_from_run). `until` stops after the stage
    of that name (e.g. "main": the CNN is trained, the fusion not yet; rerun with resume=True to go on).

    Started by torchrun (WORLD_SIZE > 1), every process trains with DistributedDataParallel on its share of the
    batches (emotionlib.distributed); rank 0 alone writes the run folder and evaluates, and every rank returns
    the same metrics.
    """
    dist = distributed.init(cfg.train.device)
    out = Path(out)
    existed = out.exists()
    fresh = not existed or (out.is_dir() and not any(p.name != ".lock" for p in out.iterdir()))
    failed_start = False
    try:
        with folder_lock(out) if dist.is_main else contextlib.nullcontext():
            try:
                return _fit(
                    cfg,
                    data,
                    out,
                    dist,
                    resume=resume,
                    split_csv=split_csv,
                    progress=progress and dist.is_main,
                    init_from=init_from,
                    until=until,
                    init_stages=init_stages,
                )
            except Exception:
                # a failed start (bad data, split, ...) must not leave a folder that blocks the corrected retry
                if dist.is_main and fresh and not (out / "checkpoints" / "last.pt").exists():
                    _empty(out)
                    failed_start = True
                raise
    finally:
        dist.close()
        if failed_start and not existed:
            (out / ".lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()


def _empty(folder: Path) -> None:
    """Remove what a failed start wrote into `folder` (which was empty or absent before it), the lock aside."""
    import shutil

    for p in folder.iterdir():
        if p.name != ".lock":
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _start_run(
    cfg: Config, data, out, resume: bool, split_csv, progress: bool, init_from, world_size: int, init_stages=None
) -> tuple[RunFolder, Config, RunData | None, Any, dict[str, Any] | None]:
    """Open (or resume) the run folder and write config.json, run.json, split.csv and skipped.csv: rank 0's work.
    Returns (run, cfg, data, (init_from, init_stages), metrics of a run that is already complete)."""
    run = RunFolder.open(out, resume)
    if (run.path / "config.json").exists():
        saved = Config.from_dict(read_json(run.path / "config.json")["config"])
        diff = config_diff(saved, cfg)
        if diff:
            raise RunFolderError(
                f"cannot resume {run.path} with a different configuration ({', '.join(diff[:5])}); "
                "choose another --out for a new run"
            )
        cfg = saved if cfg.train.device == saved.train.device else cfg
    else:
        validate(cfg)
    if run.complete:
        return run, cfg, None, (init_from, init_stages), read_json(run.path / "metrics.json")
    rd = prepare_data(cfg, data, run, split_csv, progress)
    classes = rd.index.classes
    from dataclasses import replace

    cfg = replace(cfg, model=replace(cfg.model, num_classes=len(classes)))
    if not (run.path / "config.json").exists():
        write_json(run.path / "config.json", {"config": cfg.to_dict(), "emotionlib": __version__})
        write_json(
            run.path / "run.json",
            {
                "data_root": str(rd.index.root.resolve()),
                "classes": classes,
                "variant": cfg.model.variant,
                "profile": cfg.profile,
                "torch": torch.__version__,
                "init_from": str(init_from) if init_from else None,
                "init_stages": init_stages,
                "world_size": world_size,
                "threads": [current_threads()],
            },
        )
    elif not run.complete:  # resumed: each start's thread count, so that runs are compared knowingly
        meta = read_json(run.path / "run.json")
        meta["threads"] = meta.get("threads", []) + [current_threads()]
        write_json(run.path / "run.json", meta)
    if init_from is None:  # a resumed run keeps the base it started from
        meta = read_json(run.path / "run.json")
        init_from, init_stages = meta.get("init_from"), meta.get("init_stages")
    return run, cfg, rd, (init_from, init_stages), None


def _fit(
    cfg: Config,
    data,
    out,
    dist: Dist,
    *,
    resume: bool,
    split_csv,
    progress: bool,
    init_from,
    until: str | None,
    init_stages: list[str] | None = None,
) -> dict[str, Any]:
    """Sec. 4.1's schedule as a loop over named steps: open the run, build the model, restore a checkpoint, then
    per stage its optimisers, its loader and its epochs, each epoch validated and checkpointed."""
    run, cfg, rd, (init_from, init_stages), complete = dist.on_main(
        lambda: _start_run(cfg, data, out, resume, split_csv, progress, init_from, dist.world_size, init_stages)
    )
    if complete is not None:
        return complete
    set_deterministic(cfg.train.deterministic)
    device = dist.device(cfg.train.device)
    model, stages, frozen, done_stages = _build_model(cfg, device, init_from, init_stages)
    state, start_stage, start_epoch, restored = _restore(run, model, stages, device, dist)
    done_stages |= restored
    loaders: dict[str, DataLoader] = {}
    # validation and the final evaluation run on rank 0 alone, while the other ranks wait at a barrier
    val_loader = make_loader(rd.val, rd.index.classes, cfg, train=False) if rd.val.samples and dist.is_main else None
    for si, stage in enumerate(stages):
        if si < start_stage or stage.name in done_stages:
            if stage.name == until:
                return {"stopped_after_stage": until}
            continue
        first_epoch = start_epoch if si == start_stage else 0
        optimizers, schedulers, modules = _stage_optimizers(
            model, stage, cfg, frozen, state if si == start_stage and first_epoch > 0 else None
        )
        loader = _train_loader(loaders, stage, rd, cfg, dist)
        step = _stage_step(model, stage, modules, cfg, dist)
        n_epochs = stage_epochs(stage, cfg)
        bar = progress_bar(total=(n_epochs - first_epoch) * len(loader), desc=f"{stage.name:>16}", enabled=progress)
        for epoch in range(first_epoch, n_epochs):
            row = _run_epoch(model, stage, si, epoch, modules, loader, optimizers, cfg, device, bar, step, dist, run)
            lr = optimizers[0].param_groups[0]["lr"]
            for sch in schedulers:
                sch.step()  # staircase: x lr_gamma every lr_step epochs (Sec. 4.1)
            if dist.is_main:
                row["val_acc"] = _validate(model, stage, epoch, n_epochs, val_loader, cfg, device)
                run.append_summary({"stage": stage.name, "epoch": epoch + 1, "lr": lr, **row})
                save_checkpoint(
                    run.last,
                    {
                        "model": model.state_dict(),
                        "stage": si,
                        "epoch": epoch + 1,
                        "optimizers": [o.state_dict() for o in optimizers],
                        "schedulers": [s.state_dict() for s in schedulers],
                        "done_stages": sorted(done_stages),
                        "config": cfg.to_dict(),
                    },
                )
            dist.barrier()
        bar.close()
        dist.check_in_sync(model, device)
        done_stages.add(stage.name)
        if dist.is_main:
            _save_stage(run, model, cfg, si, stage, done_stages)
        dist.barrier()
        state = None
        if stage.name == until:
            return {"stopped_after_stage": until}
    return dist.on_main(lambda: finish(model, cfg, rd, run, device))


def _build_model(
    cfg: Config, device: torch.device, init_from, init_stages
) -> tuple[UnifiedCNNRNN, list[Stage], set[str], set[str]]:
    """The seeded model, its stages, the modules copied frozen from `init_from` and the CNN stages that leaves
    with nothing to train."""
    torch.manual_seed(derive_seed(cfg.train.seed, "init"))
    model = UnifiedCNNRNN(cfg.model).to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    stages = all_stages(model, cfg)
    frozen: set[str] = set()
    if init_from is not None:  # resuming overwrites the weights just below
        frozen = init_from_run(model, Path(init_from), stages, init_stages)
    done = {st.name for st in stages if st.name != "fusion" and all(n in frozen for n, _ in model.stage_modules(st))}
    return model, stages, frozen, done


def _restore(
    run: RunFolder, model: UnifiedCNNRNN, stages: list[Stage], device: torch.device, dist: Dist
) -> tuple[dict[str, Any] | None, int, int, set[str]]:
    """Where a resumed run goes on: (last.pt's payload or None, stage index, epochs done in it, stages done), the
    model loaded from last.pt or, where it is lost, from the latest finished stage's checkpoint; summary.csv is
    cut back to that point. (None, 0, 0, {}) for a fresh run."""
    state, start_stage, start_epoch, done = None, 0, 0, set()
    if run.last.exists():
        state = load_checkpoint(run.last, device)
        if not {"model", "stage", "epoch"} <= set(state):
            raise CheckpointError(
                f"checkpoint {run.last} is not a resumable checkpoint of emotionlib (it lacks "
                f"{', '.join(sorted({'model', 'stage', 'epoch'} - set(state)))})"
            )
        load_model_state(model, state["model"], run.last)
        start_stage, start_epoch = state["stage"], state["epoch"]
        done = set(state.get("done_stages", []))
    else:  # last.pt lost: go on after the latest finished stage, whose checkpoint holds the whole model
        finished = [si for si, st in enumerate(stages) if (run.checkpoints / f"stage-{st.name}.pt").exists()]
        if finished:
            si = finished[-1]
            path = run.checkpoints / f"stage-{stages[si].name}.pt"
            load_model_state(model, load_checkpoint(path, device)["model"], path)
            start_stage = si + 1
            done = {st.name for st in stages[: si + 1]}
        elif read_summary(run.path / "summary.csv"):
            raise RunFolderError(
                f"cannot resume {run.path}: {run.last} is missing and no stage finished, so the "
                "epochs in summary.csv cannot be continued; choose another --out for a new run"
            )
    if dist.is_main and (run.path / "summary.csv").exists():  # rows past the checkpoint would repeat: drop them
        run.truncate_summary([st.name for st in stages], start_stage, start_epoch)
    return state, start_stage, start_epoch, done


def _stage_optimizers(model: UnifiedCNNRNN, stage: Stage, cfg: Config, frozen: set[str], state: dict[str, Any] | None):
    """(optimisers, staircase schedulers, modules trained) of one stage, restored from `state` mid-stage."""
    optimizers, modules = make_optimizers(model, stage, cfg, frozen)
    schedulers = [torch.optim.lr_scheduler.StepLR(o, cfg.train.lr_step, cfg.train.lr_gamma) for o in optimizers]
    if state is not None:
        for o, s in zip(optimizers, state["optimizers"]):
            o.load_state_dict(s)
        for sch, s in zip(schedulers, state["schedulers"]):
            sch.load_state_dict(s)
    return optimizers, schedulers, modules


def _train_loader(cache: dict[str, DataLoader], stage: Stage, rd: RunData, cfg: Config, dist: Dist) -> DataLoader:
    """Pairs for the CNN stages (Eq. 3-5), shuffled batches for the fusion stage; one loader of each kind per run."""
    kind = "fusion" if stage.name == "fusion" else "pairs"
    if kind not in cache:
        targets, n_ranks, rank = rd.train.targets, dist.world_size, dist.rank
        sampler = (
            ShuffleBatchSampler(len(targets), cfg.train.batch_size, cfg.train.seed, n_ranks, rank)
            if kind == "fusion"
            else PairBatchSampler(targets, cfg.train.batch_size, cfg.data.same_fraction, cfg.train.seed, n_ranks, rank)
        )
        cache[kind] = make_loader(rd.train, rd.index.classes, cfg, train=True, batch_sampler=sampler)
    return cache[kind]


def _stage_step(model: UnifiedCNNRNN, stage: Stage, modules: list[nn.Module], cfg: Config, dist: Dist) -> nn.Module:
    """A fresh DDP per stage: each stage trains other parameters, and DDP fixes its set when it is built. In the
    fusion stage the branch classifiers (Eq. 1) are outside Eq. 11's loss, so DDP must look for unused ones."""
    set_trainable(model, modules)
    step = dist.wrap(StageStep(model, stage), find_unused_parameters=stage.name == "fusion" and len(modules) > 1)
    return torch.compile(step) if cfg.train.compile else step


def _run_epoch(
    model, stage, si, epoch, modules, loader, optimizers, cfg, device, bar, step, dist, run: RunFolder
) -> dict[str, Any]:
    """One seeded epoch: a resumed epoch draws what an uninterrupted one draws."""
    set_trainable(model, modules)
    torch.manual_seed(derive_seed(cfg.train.seed, si, epoch, *(("rank", dist.rank) if dist.rank else ())))  # dropout
    loader.batch_sampler.set_epoch(derive_seed(si, epoch))
    loader.dataset.set_epoch(derive_seed(si, epoch))
    try:
        return train_one_epoch(model, stage, loader, optimizers, cfg, device, bar, step, dist)
    except TrainingError as e:
        raise TrainingError(
            f"{e} (stage {stage.name}, epoch {epoch + 1}); the last good checkpoint is "
            f"{run.last if run.last.exists() else 'none'}"
        ) from None


def _validate(model, stage: Stage, epoch: int, n_epochs: int, val_loader, cfg: Config, device) -> float:
    """Validation accuracy every `train.eval_every` epochs and at the stage's end (NaN otherwise): the stage's
    newest head for a CNN stage, the variant's output for the fusion stage."""
    if val_loader is None or not ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == n_epochs):
        return float("nan")
    head = None if stage.name == "fusion" else stage.heads[-1]
    p, y, _ = predict_probs(model, val_loader, device, head, cfg.train.amp, centre_only=cfg.train.val_crops == "centre")
    return accuracy(p, y)


def _save_stage(run: RunFolder, model: UnifiedCNNRNN, cfg: Config, si: int, stage: Stage, done: set[str]) -> None:
    save_checkpoint(run.checkpoints / f"stage-{stage.name}.pt", {"model": model.state_dict(), "config": cfg.to_dict()})
    save_checkpoint(
        run.last,
        {
            "model": model.state_dict(),
            "stage": si + 1,
            "epoch": 0,
            "optimizers": [],
            "schedulers": [],
            "done_stages": sorted(done),
            "config": cfg.to_dict(),
        },
    )


def init_from_run(
    model: UnifiedCNNRNN, base: Path, stages: list[Stage], init_stages: list[str] | None = None
) -> set[str]:
    """Start from another run's CNN (a run folder's model.pt, or any of its checkpoint files): copy every tensor
    whose name and shape agree, and freeze the modules copied whole. Returns the names of the modules to keep
    frozen; a CNN stage none of whose modules needs training is skipped. So a 5-branch fusion variant goes straight
    to its fusion stage, and a module of another shape is trained whole from the copied weights where shapes agree
    (the main branch of `bigru4`, whose FC_5 reads three side branches). `init_stages`: copy only the modules of the
    CNN stages of these names (the stages both runs train identically: experiment.shared_stages), leaving the rest
    at this run's own initial draw."""
    path = base / "checkpoints" / "model.pt" if base.is_dir() else base
    src = load_checkpoint(path)["model"]
    own = model.state_dict()
    allowed = None
    if init_stages is not None:
        allowed = {
            n
            for st in stages
            if st.name in init_stages
            for _, mod in model.stage_modules(st)
            for n, _ in _named_in(model, mod)
        }
    copied = {
        k
        for k, v in src.items()
        if k in own and own[k].shape == v.shape and not k.startswith("head.") and (allowed is None or k in allowed)
    }
    own.update({k: src[k] for k in copied})
    model.load_state_dict(own)
    frozen = set()
    for st in stages:
        if st.name == "fusion":
            continue
        for name, mod in model.stage_modules(st):
            keys = [n for n, _ in _named_in(model, mod)]
            if keys and all(k in copied for k in keys):
                frozen.add(name)
    return frozen


def _named_in(model: nn.Module, module: nn.Module):
    ids = {id(t) for t in list(module.parameters()) + list(module.buffers())}
    for n, t in list(model.named_parameters()) + list(model.named_buffers()):
        if id(t) in ids:
            yield n, t


def finish(model: UnifiedCNNRNN, cfg: Config, rd: RunData, run: RunFolder, device: torch.device) -> dict[str, Any]:
    """Five-crop evaluation on the test and validation splits; metrics.json, predictions.csv, model.pt."""
    classes = rd.index.classes
    metrics: dict[str, Any] = {
        "variant": cfg.model.variant,
        "profile": cfg.profile,
        "seed": cfg.train.seed,
        "device": str(device),
        "rnn_cell": cfg.model.rnn_cell,
        "classes": classes,
        "n_train": len(rd.train.samples),
        "n_val": len(rd.val.samples),
        "n_test": len(rd.test.samples),
        "n_skipped": len(rd.index.skipped),
    }
    test_loader = make_loader(rd.test, classes, cfg, train=False)
    p, branch_p, y, idx = predict_all(model, test_loader, device, cfg.train.amp)
    s = summarise_predictions(y, p, classes)
    metrics.update(
        test_accuracy=s["accuracy"], per_class_tpr=s["per_class_tpr"], mean_tpr=s["mean_tpr"], confusion=s["confusion"]
    )
    if rd.val.samples:
        pv, yv, _ = predict_probs(model, make_loader(rd.val, classes, cfg, train=False), device, None, cfg.train.amp)
        metrics["val_accuracy"] = accuracy(pv, yv)
    else:
        metrics["val_accuracy"] = float("nan")
    # each branch's classifier (Eq. 1) after the fusion stage has fine-tuned the CNN under it, and - the number
    # Sec. 3.2's per-branch training is about - at the end of the branch's own stage, from its stage checkpoint
    metrics["branch_test_accuracy_after_fusion"] = {k: accuracy(branch_p[k], y) for k in model.feature_keys}
    metrics["branch_test_accuracy_at_stage"] = stage_branch_accuracy(cfg, run, test_loader, device)
    write_predictions(run.path / "predictions.csv", rd.test, classes, p, y, idx)
    save_checkpoint(
        run.checkpoints / "model.pt",
        {"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes, "emotionlib": __version__},
    )
    write_json(run.path / "metrics.json", metrics, strict=True)  # an empty val split: null, not a bare NaN
    return metrics


def stage_branch_accuracy(cfg: Config, run: RunFolder, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """head -> test accuracy of each classifier as its own CNN stage left it, from this run's stage-main.pt: every
    branch is frozen after its stage (set_trainable), so the CNN after the last CNN stage holds each branch as its
    stage left it. Empty for a run that copied all its CNN stages from another (init_from): that run's are the same."""
    path = run.checkpoints / "stage-main.pt"
    if not path.exists():
        return {}
    model = load_model(path, device)[0]
    _, branch_p, y, _ = predict_all(model, loader, device, cfg.train.amp)
    return {k: accuracy(branch_p[k], y) for k in model.feature_keys}


def write_predictions(
    path: Path, part: DatasetIndex, classes: list[str], probs: np.ndarray, targets: np.ndarray, idx: np.ndarray
) -> None:
    rows = []
    for p, y, i in zip(probs, targets, idx):
        pred = int(p.argmax())
        rows.append(
            [
                relative_path(part.samples[int(i)].path, part.root),
                classes[int(y)],
                classes[pred],
                int(pred == int(y)),
                *[f"{v:.6f}" for v in p],
            ]
        )
    write_csv(path, ["path", "label", "pred", "correct", *[f"p_{c}" for c in classes]], rows)


# RunFolder, read_summary, the checkpoint helpers and TrainingError live in checkpoint.py and errors.py; they stay
# importable from here, where the notebooks and scripts that train reach for them.
__all__ = [
    "fit",
    "train_one_epoch",
    "RunFolder",
    "load_run",
    "load_checkpoint",
    "save_checkpoint",
    "TrainingError",
    "read_summary",
    "load_model_state",
    "set_trainable",
    "all_stages",
    "derive_seed",
    "ShuffleBatchSampler",
]
