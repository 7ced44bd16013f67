"""Benchmarks: every speed claim of this project measured against the alternative, side by side in one process.

    emotionlib bench --out runs/bench [--quick]      # DIR/bench.json, DIR/bench.md, and the table on stdout

1. input pipeline: EmotionDataset (eval mode, decoded-image disk cache) against torchvision's ImageFolder + Resize
   + FiveCrop + ToTensor + Normalize on the same generated photo-sized JPEGs, first and later epoch, both loaders
   advanced in lockstep so that they share the machine's load; memory growth for a quarter and all of the images.
2. ablation sweep: Table 1's fusion variants on one shared CNN with cached branch features (emotionlib.ablation)
   against `fit` per variant, end to end; wall and CPU seconds, and both accuracies side by side.
3. training throughput: one fusion-stage step (forward, Eq. 11, backward through the whole CNN, optimiser step) in
   images/s, and its FLOP/s (FlopCounterMode) as a fraction of a large fp32 matmul timed in the same rounds;
   contiguous against channels-last against torch.compile. On CUDA the same in bf16 against a bf16 matmul.
4. inference: one image with five-crop averaging (median, 95th percentile), batch throughput, and the cold start
   of `emotionlib predict` against a bare `python -c "import torch"`.
5. a machine that is not idle: a short smoke `fit` and the sweep's feature extraction beside 0, 1, 2 busy
   processes, for today's thread policy and emotionlib.threads' settings, each against the fair share.

`emotionlib bench --device cuda` instead measures the paper's profile in bf16 on a GPU (bench_gpu).

The machine these run on is shared: absolute times are this machine at this moment; the ratios, measured side by
side, are the claims. CPU seconds (process time) are reported beside wall seconds where contention distorts wall
time. Nothing here is a test: tests/test_bench.py only checks that --quick writes the files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# torch and the rest are imported inside the functions: `emotionlib <any command>` imports this module at start-up.

PHOTO_SIZE = (500, 400)  # about an FI photo (width, height)


# ----------------------------------------------------------------------------- helpers


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _p95(xs: list[float]) -> float:
    import numpy as np

    return float(np.percentile(xs, 95)) if xs else float("nan")


def _rss() -> int | None:
    """Resident memory of this process in bytes (Linux /proc, else psutil when installed)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except ImportError:
            return None


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b and b == b and a == a else float("nan")


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def make_photo_jpegs(folder: Path, n: int, classes: int = 4, seed: int = 0) -> list[Path]:
    """`n` JPEGs of about 500x400 in `classes` class folders (ImageFolder's layout): a smooth colour field, a few
    shapes and fine grain, so that their file sizes (~50 KB) and decoding cost are those of photos. Reused when
    the folder already holds the same set."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    stamp = folder / "set.json"
    want = {"n": n, "classes": classes, "seed": seed, "size": PHOTO_SIZE, "format": 1}
    paths = [folder / f"c{i % classes}" / f"{i:05d}.jpg" for i in range(n)]
    if stamp.exists() and json.loads(stamp.read_text()) == want and all(p.exists() for p in paths):
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    for i, p in enumerate(paths):
        rng = np.random.default_rng((seed, i))
        w, h = PHOTO_SIZE[0] + int(rng.integers(-40, 41)), PHOTO_SIZE[1] + int(rng.integers(-20, 31))
        im = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "RGB").resize((w, h), Image.BICUBIC)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
            box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        grain = rng.integers(-12, 13, (h, w, 1), dtype=np.int16)
        a = (np.asarray(im, dtype=np.int16) + grain).clip(0, 255).astype(np.uint8)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a, "RGB").filter(ImageFilter.GaussianBlur(0.6)).save(p, quality=90)
    stamp.write_text(json.dumps(want))
    return paths


# ----------------------------------------------------------------------------- 1. input pipeline


def _torchvision_five_crop(crops):
    """torchvision's documented FiveCrop idiom: ToTensor and Normalize on each crop, then stack."""
    import torch
    import torchvision.transforms.functional as TF

    from .data import IMAGENET_MEAN, IMAGENET_STD

    return torch.stack([TF.normalize(TF.to_tensor(c), IMAGENET_MEAN, IMAGENET_STD) for c in crops])


def _ours(root: Path, n: int, resize: int, crop: int, cache: Path | None, memory: bool = False):
    """This project's eval pipeline over the first `n` images of `root`, in ImageFolder's order."""
    from .data import EmotionDataset, Sample

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = sorted((p, c) for c in classes for p in (root / c).glob("*.jpg"))[:n]
    return EmotionDataset(
        [Sample(p, c) for p, c in files],
        {c: i for i, c in enumerate(classes)},
        resize=resize,
        crop=crop,
        train=False,
        cache=memory,
        disk_cache=cache,
    )


def _torchvision(root: Path, n: int, resize: int, crop: int):
    """torchvision's: ImageFolder (PIL) + Resize + FiveCrop + ToTensor + Normalize, over the same images."""
    from torchvision import datasets, transforms

    tv = datasets.ImageFolder(
        str(root),
        transform=transforms.Compose(
            [transforms.Resize(resize), transforms.FiveCrop(crop), transforms.Lambda(_torchvision_five_crop)]
        ),
    )
    tv.samples = tv.imgs = tv.samples[:n]
    tv.targets = [t for _, t in tv.samples]
    return tv


def _lockstep(sources) -> tuple[list[float], list[float], Any]:
    """Take one item (or batch) from each source in turn, so that all of them run under the same machine load;
    wall and CPU seconds per source, and each source's first item (to check that they agree)."""
    its = [iter(src) for src in sources]
    wall, cpu, first = [0.0] * len(its), [0.0] * len(its), [None] * len(its)
    while True:
        done = False
        for k, it in enumerate(its):
            t, c = time.perf_counter(), time.process_time()
            b = next(it, None)
            wall[k] += time.perf_counter() - t
            cpu[k] += time.process_time() - c
            if b is None:
                done = True
            elif first[k] is None:
                first[k] = b[0]
        if done:
            return wall, cpu, first


def _items(ds):
    return (ds[i] for i in range(len(ds)))


def _memory_child(root: str, n: int, resize: int, crop: int, cache: str, kind: str) -> None:
    """In a fresh process (a used heap would hide growth): one pass over `n` items of one loader; prints the peak
    growth of resident memory after n/4 items and after all n, from the end of the first item on."""
    ds = (
        _torchvision(Path(root), n, resize, crop)
        if kind == "torchvision"
        else _ours(Path(root), n, resize, crop, Path(cache), memory=kind == "ours_memory_cache")
    )
    ds[0]  # imports, first allocations
    base = peak = _rss()
    growth = {}
    for i in range(1, n):
        item = ds[i]
        peak = max(peak, _rss())
        del item
        if i + 1 in (n // 4, n):
            growth[str(i + 1)] = round((peak - base) / 2**20, 1)
    print(json.dumps(growth))


def _memory_growth(root: Path, n: int, resize: int, crop: int, cache: Path) -> dict[str, dict[str, float | None]]:
    """RSS growth of the three loaders, one child process each (run at once: this measures memory, not time)."""
    kinds = ("ours_disk_cache", "torchvision", "ours_memory_cache")
    procs = {
        k: subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys; from emotionlib.bench import _memory_child; "
                "_memory_child(sys.argv[1], *map(int, sys.argv[2:5]), *sys.argv[5:])",
                str(root),
                str(n),
                str(resize),
                str(crop),
                str(cache),
                k,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for k in kinds
    }
    out = {}
    for k, pr in procs.items():
        text, _ = pr.communicate()
        try:
            out[k] = json.loads(text.strip().splitlines()[-1])
        except (IndexError, ValueError):
            out[k] = {str(n // 4): None, str(n): None}
    return out


def bench_input_pipeline(work: Path, quick: bool) -> dict[str, Any]:
    import torch

    n, resize, crop, batch = (48, 400, 375, 8) if quick else (1000, 400, 375, 8)
    paths = make_photo_jpegs(work / "jpegs", n)
    for p in paths:  # into the OS page cache: neither pipeline should pay for the disk
        p.read_bytes()
    cache = work / "decoded-cache"
    shutil.rmtree(cache, ignore_errors=True)
    ours, tv = _ours(work / "jpegs", n, resize, crop, cache), _torchvision(work / "jpegs", n, resize, crop)
    assert [str(s.path) for s in ours.samples] == [p for p, _ in tv.samples]
    n_loader = n if quick else n // 4  # the DataLoader row on a quarter: its collation costs both sides alike
    loaders = [
        torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, range(n_loader)), batch_size=batch, shuffle=False, num_workers=0
        )
        for ds in (ours, tv)
    ]
    epochs = {}
    # item by item: decode, resize, five crops, normalise - the pipelines themselves; then the same through a
    # DataLoader, whose collation (one 67 MB batch at 375 px) both pay alike
    for name, sources in (
        ("first", [_items(ours), _items(tv)]),
        ("later", [_items(ours), _items(tv)]),
        ("later, DataLoader", loaders),
    ):
        wall, cpu, first = _lockstep(sources)
        k = n_loader if "DataLoader" in name else n
        epochs[name] = {
            "ours_images_per_s": round(k / wall[0], 2),
            "torchvision_images_per_s": round(k / wall[1], 2),
            "speedup": _ratio(wall[1], wall[0]),
            "cpu_speedup": _ratio(cpu[1], cpu[0]),
        }
        if name == "first":
            same = bool(torch.equal(first[0], first[1]))
    cached_bytes = sum(f.stat().st_size for f in cache.rglob("*.npy"))
    # memory: after a quarter of the images and after all of them, for the disk cache, torchvision, the memory cache
    sizes = (n // 4, n)
    memory = _memory_growth(work / "jpegs", n, resize, crop, cache)
    return {
        "images": n,
        "image_size": list(PHOTO_SIZE),
        "resize": resize,
        "crop": crop,
        "batch_size": batch,
        "num_workers": 0,
        "mean_jpeg_kb": round(sum(p.stat().st_size for p in paths) / n / 1e3, 1),
        "same_tensors_as_torchvision": same,
        "epochs": epochs,
        "loader_images": n_loader,
        "disk_cache_mb": round(cached_bytes / 2**20, 1),
        "rss_growth_mb": memory,
        "memory_sizes": list(sizes),
        "alternative": "torchvision ImageFolder + Resize + FiveCrop + ToTensor + Normalize (PIL)",
    }


# ----------------------------------------------------------------------------- 2. ablation sweep


def _warm_up(cfg) -> None:
    """One training step and one evaluation chunk of the profile's model at its shapes, and one optimiser."""
    import torch

    from .evaluate import CPU_CHUNK
    from .model import UnifiedCNNRNN

    model = UnifiedCNNRNN(cfg.model)
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(cfg.train.batch_size, 3, cfg.data.crop, cfg.data.crop).contiguous(memory_format=fmt)
    model.train()
    model(x).logsumexp(1).mean().backward()
    opt.step()
    model.eval()
    with torch.inference_mode():
        model(x[:CPU_CHUNK])


def bench_ablation(work: Path, quick: bool) -> dict[str, Any]:
    from dataclasses import replace

    import torch

    from .ablation import run_sweep
    from .config import get_config
    from .synth import generate
    from .train import fit, load_checkpoint

    # Table 1's rows with branches, i.e. every row but "without branch": the five fusions share the whole CNN; the
    # sweep gives bigru4 / bigru6 the base trunk and branches and retrains only what they change (notebook 04)
    variants = ("ensemble", "gru") if quick else ("ensemble", "lstm", "bilstm", "gru", "bigru", "bigru4", "bigru6")
    profile, per_class, size = ("tiny", 6, 64) if quick else ("smoke", 24, 128)
    root = work / "ablation"
    shutil.rmtree(root, ignore_errors=True)
    data = generate(root / "data", per_class=per_class, size=size, seed=0, progress=False)
    cfg = get_config(profile)
    clock: dict[str, list[float]] = {}
    # One-time costs of the process, out of both sides: PyTorch imports torch._dynamo (about 2 s) when the first
    # optimiser is built, and oneDNN builds its kernels for each new convolution shape; both would otherwise fall
    # on whichever side runs first (the shared CNN).
    _warm_up(cfg)

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        clock[name] = [time.perf_counter() - t, time.process_time() - c]
        return out

    e2e: dict[str, dict[str, Any]] = {}

    def end_to_end(v: str) -> None:
        vcfg = replace(cfg, model=replace(cfg.model, variant=v))
        e2e[v] = timed(
            f"e2e:{v}", lambda: fit(vcfg, data, root / "e2e" / v, split_csv=base / "split.csv", progress=False)
        )

    # interleaved (base CNN, one end-to-end run, the sweep, the other end-to-end runs), so that a change in the
    # machine's load falls on both sides
    base = root / "base"
    timed("base_cnn", lambda: fit(cfg, data, base, until="main", progress=False))
    end_to_end(variants[0])
    df = timed("sweep", lambda: run_sweep(base, None, root / "sweep", variants=variants, progress=False))
    for v in variants[1:]:
        end_to_end(v)
    cached = [clock["base_cnn"][i] + clock["sweep"][i] for i in (0, 1)]
    full = [sum(clock[f"e2e:{v}"][i] for v in variants) for i in (0, 1)]
    # the end-to-end runs of the five-branch variants train the very CNN the sweep shares, once per variant: the
    # redundancy the sweep removes (bigru4 / bigru6 have other branches, so other CNNs)
    from .model import parse_variant

    shared = load_checkpoint(base / "checkpoints" / "stage-main.pt")["model"]
    same_cnn = all(
        torch.equal(t, load_checkpoint(root / "e2e" / v / "checkpoints" / "stage-main.pt")["model"][k])
        for v in variants
        if parse_variant(v)[1] == 5
        for k, t in shared.items()
        if not k.startswith("head.")
    )
    rows = []
    for v in variants:
        r = df[df["variant"] == v].iloc[0]
        rows.append(
            {
                "variant": v,
                "cached_test_acc": round(float(r["this_run_test_acc"]) / 100, 4),
                "end_to_end_test_acc": round(float(e2e[v]["test_accuracy"]), 4),
                "end_to_end_s": round(clock[f"e2e:{v}"][0], 2),
                "head_s": round(float(r["seconds"]), 2),
            }
        )
    profile_ = _sweep_profile(root, variants, clock, rows, cfg)
    return {
        "profile": profile,
        "reduced": f"{per_class * 8} synthetic images of {size} px, the {profile} profile's epochs",
        "variants": list(variants),
        "n_test": int(e2e[variants[0]]["n_test"]),
        "cached_wall_s": round(cached[0], 2),
        "end_to_end_wall_s": round(full[0], 2),
        "cached_cpu_s": round(cached[1], 2),
        "end_to_end_cpu_s": round(full[1], 2),
        "base_cnn_wall_s": round(clock["base_cnn"][0], 2),
        "sweep_wall_s": round(clock["sweep"][0], 2),
        "base_cnn_cpu_s": round(clock["base_cnn"][1], 2),
        "sweep_cpu_s": round(clock["sweep"][1], 2),
        "speedup": _ratio(full[0], cached[0]),
        "cpu_speedup": _ratio(full[1], cached[1]),
        "end_to_end_cnns_identical_to_shared": bool(same_cnn),
        "per_variant": rows,
        "profile_s": profile_,
        "note": "the cached path freezes the CNN (heads on cached features); the paper, and the end-to-end "
        "runs, fine-tune it in the fusion stage",
    }


def _sweep_profile(root: Path, variants, clock, rows, cfg) -> dict[str, Any]:
    """Where the seconds go on each side (from the runs' summary.csv and the sweep's own timing), and what the same
    per-epoch costs give at the paper's epoch counts (20 per CNN stage, 20 for the fusion; a projection)."""
    from .train import read_summary
    from .utils import read_json

    def epochs(run: Path, fusion: bool) -> float:
        return sum(float(r["seconds"]) for r in read_summary(run / "summary.csv") if (r["stage"] == "fusion") == fusion)

    base_cnn = epochs(root / "base", False)
    features = float(read_json(root / "sweep" / "sweep.json").get("feature_seconds", float("nan")))
    heads = sum(r["head_s"] for r in rows)
    e2e_cnn = sum(epochs(root / "e2e" / v, False) for v in variants)
    e2e_fusion = sum(epochs(root / "e2e" / v, True) for v in variants)
    e2e_total = sum(clock[f"e2e:{v}"][0] for v in variants)
    cached_total = clock["base_cnn"][0] + clock["sweep"][0]
    k_cnn, k_fusion = 20 / max(cfg.train.stage_epochs, 1), 20 / max(cfg.train.fusion_epochs, 1)
    e2e_paper = e2e_cnn * k_cnn + e2e_fusion * k_fusion + (e2e_total - e2e_cnn - e2e_fusion)
    cached_paper = base_cnn * k_cnn + heads * k_fusion + (cached_total - base_cnn - heads)
    return {
        "shared_cnn_epochs": round(base_cnn, 2),
        "feature_extraction": round(features, 2),
        "heads": round(heads, 2),
        "cached_other": round(cached_total - base_cnn - features - heads, 2),
        "end_to_end_cnn_epochs": round(e2e_cnn, 2),
        "end_to_end_fusion_epochs": round(e2e_fusion, 2),
        "end_to_end_other": round(e2e_total - e2e_cnn - e2e_fusion, 2),
        "projected_speedup_at_paper_epochs": _ratio(e2e_paper, cached_paper),
    }


# ----------------------------------------------------------------------------- 3. training throughput

#: dense bf16 tensor-core peaks (no sparsity) by device name, for the fraction of the chip's datasheet figure
#: (the SXM parts; the PCIe H100 is slower)
BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
    "V100": 125.0,
}


def peak_bf16_tflops(name: str) -> float | None:
    """The datasheet's dense bf16 peak of the device called `name` (torch.cuda.get_device_name), None if unknown.
    The longest matching key wins ("H100 PCIe" before "H100", "A100" before "A10")."""
    for key in sorted(BF16_PEAK_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return BF16_PEAK_TFLOPS[key]
    return None


def forward_flops_per_image(model, crop: int, device="cpu") -> int:
    """FLOPs of one image's forward pass (convolutions and matrix products, FlopCounterMode); a training step
    costs about 3x this (the backward pass computes two products per forward one)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, crop, crop, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


def fraction_of_peak(flops_per_image: float, images_per_s: float, peak_tflops: float | None) -> float | None:
    """Achieved FLOP/s (images/s x FLOPs per image) over the peak; None when the peak is unknown."""
    if not peak_tflops:
        return None
    return flops_per_image * images_per_s / (peak_tflops * 1e12)


def bench_gpu(quick: bool = False, batch: int | None = None) -> dict[str, Any]:
    """The paper's profile (375-px crops) on CUDA in bf16 autocast, channels-last: training images/s (the fusion
    stage with every parameter trained, the heaviest step) and inference images/s (one 375-px crop per image; a
    five-crop photo costs five), each with its FLOP/s as a fraction of the chip's datasheet bf16 peak."""
    import torch

    from .config import get_config
    from .model import UnifiedCNNRNN
    from .utils import autocast

    batch = batch or (8 if quick else 64)
    dev = torch.device("cuda")
    cfg = get_config("paper", **{"train.batch_size": batch, "train.device": "cuda", "train.amp": True})
    crop = cfg.data.crop
    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model).to(dev).to(memory_format=torch.channels_last)
    fwd = forward_flops_per_image(model, crop, dev)
    name = torch.cuda.get_device_name(0)
    peak = peak_bf16_tflops(name)
    rounds = 5 if quick else 20

    def rate(fn, n_images: int) -> float:
        for _ in range(3):  # cuDNN's algorithm search, allocations
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(rounds):
            fn()
        torch.cuda.synchronize()
        return n_images * rounds / (time.perf_counter() - t)

    step, _ = _fusion_setup(cfg, dev, channels_last=True, compile_=False)
    x = torch.randn(batch, 3, crop, crop, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch, device=dev) % cfg.model.num_classes
    train_ips = rate(lambda: step(x, y), batch)
    model.eval()

    def infer():
        with torch.inference_mode(), autocast(dev):
            model(x)

    infer_ips = rate(infer, batch)
    out = {
        "device": name,
        "crop": crop,
        "batch_size": batch,
        "dtype": "bf16 autocast",
        "rounds": rounds,
        "gflop_per_image_forward": round(fwd / 1e9, 2),
        "peak_bf16_tflops": peak,
        "train_images_per_s": round(train_ips, 1),
        "infer_images_per_s": round(infer_ips, 1),
        "train_fraction_of_peak": fraction_of_peak(3 * fwd, train_ips, peak),
        "infer_fraction_of_peak": fraction_of_peak(fwd, infer_ips, peak),
    }
    for k in ("train_fraction_of_peak", "infer_fraction_of_peak"):
        out[k] = None if out[k] is None else round(out[k], 3)
    return out


def gpu_markdown(r: dict[str, Any]) -> str:
    peak = f"{r['peak_bf16_tflops']} TFLOP/s" if r["peak_bf16_tflops"] else "unknown (add it to BF16_PEAK_TFLOPS)"
    return (
        "\n".join(
            [
                f"# emotionlib bench --device cuda: {r['device']}",
                "",
                f"Paper profile, {r['crop']}-px crops, {r['dtype']}, batch {r['batch_size']}, channels-last; "
                f"{r['gflop_per_image_forward']} GFLOP per image forward (training counted as 3x); bf16 peak {peak}.",
                "",
                "| | images/s | fraction of bf16 peak |",
                "|---|---|---|",
                f"| training (fusion stage, all parameters) | {r['train_images_per_s']} | {r['train_fraction_of_peak']} |",
                f"| inference (one crop per image) | {r['infer_images_per_s']} | {r['infer_fraction_of_peak']} |",
            ]
        )
        + "\n"
    )


def _mm_flops_per_s(n: int, dtype, device, reps: int = 3) -> float:
    """FLOP/s of an n x n matrix multiply: the dense-compute ceiling of this device, measured now."""
    import torch

    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _fusion_setup(cfg, device, channels_last: bool, compile_: bool):
    """A model in its fusion stage with everything trainable (the heaviest step of the run), and its step()."""
    import torch

    from .losses import fusion_loss
    from .model import UnifiedCNNRNN
    from .train import StageStep, all_stages, make_optimizers, set_trainable
    from .utils import autocast

    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    stage = all_stages(model)[-1]
    opts, mods = make_optimizers(model, stage, cfg)
    set_trainable(model, mods)
    fwd = StageStep(model, stage)
    fwd = torch.compile(fwd) if compile_ else fwd
    t = cfg.train

    def loss_of(x, y):
        with autocast(torch.device(device), t.amp):
            return fusion_loss(fwd(x), y, model.head.weight_matrices(), t.reg_lambda, t.reg_squared)[0]

    def step(x, y):
        loss = loss_of(x, y)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()

    return step, loss_of


def _count_flops(loss_of, x, y) -> int:
    """Forward + backward FLOPs of one step, counted from the conv / matmul shapes (FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        loss_of(x, y).backward()
    return int(fc.get_total_flops())


def bench_training(quick: bool, compile_: bool = False) -> dict[str, Any]:
    import torch

    from .config import get_config

    cases = [("tiny", 8, 4, 1024)] if quick else [("smoke", 32, 5, 2048), ("paper", 8, 3, 2048)]
    out: dict[str, Any] = {
        "cpu": {},
        "step": "fusion stage, every parameter trained: forward, Eq. 11, backward, optimiser step (fp32 on the CPU)",
    }
    for profile, batch, rounds, mm_n in cases:
        cfg = get_config(profile, **{"train.batch_size": batch, "train.device": "cpu"})
        crop = cfg.data.crop
        x, y = torch.randn(batch, 3, crop, crop), torch.arange(batch) % cfg.model.num_classes
        kinds = {"contiguous": (False, False), "channels_last": (True, False)}
        if compile_ and not quick and profile == "smoke":
            kinds["compile"] = (False, True)
        steps, res = {}, {}
        for k, (cl, comp) in kinds.items():
            steps[k], loss_of = _fusion_setup(cfg, "cpu", cl, comp)
            if k == "contiguous":
                flops = _count_flops(loss_of, x, y)
        xin = {k: x.contiguous(memory_format=torch.channels_last) if kinds[k][0] else x for k in kinds}
        warm = {}
        for k in kinds:  # the first step: allocation, oneDNN primitive choice, and for torch.compile the compile
            t = time.perf_counter()
            try:
                steps[k](xin[k], y)
            except Exception as e:  # noqa: BLE001  no C++ compiler for inductor, say: report it, measure the rest
                res[k] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
            warm[k] = time.perf_counter() - t
        times: dict[str, list[float]] = {k: [] for k in kinds if k not in res}
        mm: list[float] = []
        for _ in range(rounds):  # round-robin, so that every kind and the matmul share the machine's load
            mm.append(_mm_flops_per_s(mm_n, torch.float32, "cpu"))
            for k in times:
                t = time.perf_counter()
                steps[k](xin[k], y)
                times[k].append(time.perf_counter() - t)
        peak = _median(mm)
        for k, ts in times.items():
            s = _median(ts)
            res[k] = {
                "images_per_s": round(batch / s, 2),
                "step_s": round(s, 3),
                "gflop_per_s": round(flops / s / 1e9, 2),
                "fraction_of_matmul": round(flops / s / peak, 3),
            }
        if "compile" in res and "error" not in res["compile"]:
            res["compile"]["compile_s"] = round(warm["compile"], 1)
        best = max((k for k in res if "error" not in res[k]), key=lambda k: res[k]["images_per_s"])
        out["cpu"][profile] = {
            "crop": crop,
            "batch_size": batch,
            "width": cfg.model.width,
            "gflop_per_image_forward": round(flops / 3 / batch / 1e9, 3),
            "gflop_per_step": round(flops / 1e9, 2),
            "matmul_gflop_per_s": round(peak / 1e9, 2),
            "matmul_n": mm_n,
            "kinds": res,
            "fastest": best,
            "rounds": rounds,
        }
    if torch.cuda.is_available():
        out["cuda"] = bench_training_cuda(quick)
    else:
        out["cuda"] = {"skipped": "no CUDA device here; the bf16 path (bench_training_cuda) runs where one is"}
    return out


def bench_training_cuda(quick: bool) -> dict[str, Any]:
    """Images/s at 375 px in bf16 autocast (channels-last), and the fraction of the chip's bf16 peak: both the
    datasheet figure (BF16_PEAK_TFLOPS) and a bf16 matmul measured in the same rounds."""
    import torch

    from .config import get_config

    batch = 8 if quick else 64
    cfg = get_config("paper", **{"train.batch_size": batch, "train.device": "cuda", "train.amp": True})
    dev = torch.device("cuda")
    x = torch.randn(batch, 3, 375, 375, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.arange(batch, device=dev) % cfg.model.num_classes
    step, loss_of = _fusion_setup(cfg, dev, channels_last=True, compile_=False)
    flops = _count_flops(loss_of, x, y)
    for _ in range(3):
        step(x, y)
    times, mm = [], []
    for _ in range(5 if quick else 20):
        torch.cuda.synchronize()
        t = time.perf_counter()
        step(x, y)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    for _ in range(3):
        mm.append(_mm_flops_per_s(8192, torch.bfloat16, dev, reps=10))
    s, name = _median(times), torch.cuda.get_device_name(0)
    spec = peak_bf16_tflops(name)
    return {
        "device": name,
        "batch_size": batch,
        "images_per_s": round(batch / s, 1),
        "step_s": round(s, 4),
        "tflop_per_s": round(flops / s / 1e12, 1),
        "matmul_bf16_tflop_per_s": round(_median(mm) / 1e12, 1),
        "fraction_of_matmul": round(flops / s / _median(mm), 3),
        "fraction_of_datasheet_peak": round(flops / s / (spec * 1e12), 3) if spec else None,
    }


# ----------------------------------------------------------------------------- 4. inference


def _fake_run(folder: Path, cfg, classes: list[str]) -> Path:
    """A run folder holding an (untrained) model.pt: what `emotionlib predict` loads. Latency does not depend on
    the weights."""
    import torch

    from . import __version__
    from .model import UnifiedCNNRNN
    from .train import save_checkpoint

    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model)
    save_checkpoint(
        folder / "checkpoints" / "model.pt",
        {"model": model.state_dict(), "config": cfg.to_dict(), "classes": classes, "emotionlib": __version__},
    )
    return folder


def _child_seconds(argv: list[str]) -> tuple[float, str | None]:
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    s = time.perf_counter() - t
    err = None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["exit code %d" % r.returncode])[-1][:200]
    return s, err


def bench_inference(work: Path, quick: bool, images: list[Path]) -> dict[str, Any]:
    import torch

    from .config import get_config
    from .data import MIKELS_EMOTIONS, EmotionDataset, Sample

    classes = list(MIKELS_EMOTIONS)
    cases = [("tiny", 6, 2, 16)] if quick else [("smoke", 24, 5, 16), ("paper", 4, 2, 4)]
    out: dict[str, Any] = {"weights": "untrained (latency does not depend on them)", "device": "cpu"}
    for profile, n_lat, rounds, batch in cases:
        cfg = get_config(profile, **{"train.device": "cpu"})
        run = _fake_run(work / f"predict-run-{profile}", cfg, classes)
        from .train import load_run

        model, cfg, _ = load_run(run, "cpu")
        lat = []
        with torch.inference_mode():
            for p in images[:n_lat]:  # as predict_images does: decode, resize, five crops, forward, average
                t = time.perf_counter()
                ds = EmotionDataset(
                    [Sample(p, classes[0])],
                    {c: i for i, c in enumerate(classes)},
                    resize=cfg.data.resize,
                    crop=cfg.data.crop,
                    train=False,
                    cache=False,
                )
                torch.softmax(model(ds[0][0]), dim=1).mean(0)
                lat.append(time.perf_counter() - t)
            x = torch.randn(batch * 5, 3, cfg.data.crop, cfg.data.crop)
            model(x)
            thr = []
            for _ in range(rounds):
                t = time.perf_counter()
                model(x)
                thr.append(batch / (time.perf_counter() - t))
        out[profile] = {
            "crop": cfg.data.crop,
            "latency_ms_median": round(1e3 * _median(lat), 1),
            "latency_ms_p95": round(1e3 * _p95(lat), 1),
            "latency_images": len(lat),
            "batch_images_per_s": round(_median(thr), 2),
            "batch_size": batch,
        }
    # cold start: whole processes, interleaved; the library call shows what the command line adds on top
    profile = cases[0][0]
    run, img = work / f"predict-run-{profile}", str(images[0])
    kinds = {
        "import_torch": [sys.executable, "-c", "import torch"],
        "emotionlib_predict": [
            sys.executable,
            "-m",
            "emotionlib",
            "predict",
            "--run",
            str(run),
            "--device",
            "cpu",
            img,
        ],
        "library_predict": [
            sys.executable,
            "-c",
            "import sys; from emotionlib.evaluate import predict_images; "
            "list(predict_images(sys.argv[1], sys.argv[2:], 'cpu'))",
            str(run),
            img,
        ],
    }
    if quick:  # the two that make the ratio
        kinds.pop("library_predict")
    secs: dict[str, list[float]] = {k: [] for k in kinds}
    errors = {}
    for _ in range(1 if quick else 2):
        for k, argv in kinds.items():
            s, err = _child_seconds(argv)
            secs[k].append(s)
            if err:
                errors[k] = err
    probe = (
        "import sys, emotionlib.cli as c; list(c._extensions()); "
        "print(','.join(m for m in ('torchvision', 'torch._dynamo', 'sklearn', 'pandas', 'matplotlib') "
        "if m in sys.modules))"
    )
    cold = {k: round(_median(v), 2) for k, v in secs.items()}
    out["cold_start_s"] = cold
    out["cold_start_ratio_to_import_torch"] = _ratio(cold["emotionlib_predict"], cold["import_torch"])
    if not quick:  # what the command line imports before it even parses its arguments
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        out["cli_startup_imports"] = r.stdout.strip().split(",") if r.returncode == 0 and r.stdout.strip() else []
    out["cold_start_profile"] = profile
    if errors:
        out["errors"] = errors
    return out


# ----------------------------------------------------------------------------- 5. a machine that is not idle

#: thread policies compared side by side: today's (PyTorch's default threads, OpenMP's default spin), the
#: library's default ("cores" with a short spin), "cores" with the passive wait policy, and "auto" (passive)
THREAD_POLICIES = ("today", "cores", "cores-passive", "auto")


def _busy() -> None:  # a CPU-bound background process (one core's worth)
    while True:
        pass


def fair_share(idle_wall: float, idle_cpu: float, cores: int, k: int) -> float:
    """The slowdown a fair share of the machine allows with `k` single-threaded CPU-bound processes beside this
    one on `cores` cores: each of the k + 1 processes gets cores / (k + 1) cores, and this one used
    u = CPU seconds / wall seconds of its idle run (between 1 and `cores`), so it slows by u (k + 1) / cores,
    and never below 1 (a free core costs nothing). One background process on two cores: 2x for a job that used
    both cores, 1x for a single-threaded one."""
    u = min(max(idle_cpu / idle_wall, 1.0), cores) if idle_wall > 0 else 1.0
    return max(1.0, u * (k + 1) / cores)


def _threads_child(work: str, task: str, setting: str, repeats: str = "1") -> None:
    """One task in a fresh process (the wait policy is read when torch loads OpenMP), run `repeats` times: prints
    JSON with the median wall time and the CPU time of that run."""
    import torch

    from .config import get_config

    if setting != "today":
        from .threads import set_threads

        set_threads(setting.split("-")[0])
    work_ = Path(work)
    cfg = get_config("smoke", **json.loads((work_ / "overrides.json").read_text()))
    runs = []
    for _ in range(int(repeats)):
        t, c = time.perf_counter(), time.process_time()
        _threads_task(work_, task, cfg)
        runs.append((time.perf_counter() - t, time.process_time() - c))
    wall, cpu = sorted(runs)[len(runs) // 2]
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "threads": torch.get_num_threads(), "repeats": len(runs)}))


def _threads_task(work_: Path, task: str, cfg) -> None:
    if task == "fit":
        from .train import fit

        out = work_ / f"fit-{os.getpid()}"
        fit(cfg, work_ / "data", out, split_csv=work_ / "base" / "split.csv", progress=False)
        shutil.rmtree(out, ignore_errors=True)
    else:  # the sweep's feature extraction: the trained CNN over the test split's five crops and their mirrors
        from .ablation import extract_features
        from .data import read_split
        from .runner import open_stage_model

        model, cfg, classes = open_stage_model(work_ / "base", device="cpu")
        index = read_split(work_ / "base" / "split.csv", root=work_ / "data", classes=classes)
        extract_features(model, index, cfg, "five+mirror", device="cpu")


def _policy_env(policy: str) -> dict[str, str]:
    from .threads import _OPENMP_KEYS, ENV, prepare_environment

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", ENV, *_OPENMP_KEYS)}
    if policy == "cores-passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy != "today":
        prepare_environment(env, policy)
    return env


def bench_threads(work: Path, quick: bool, policies: tuple[str, ...] = THREAD_POLICIES) -> dict[str, Any]:
    """The smoke `fit` and the sweep's feature extraction on idle cores and beside 1, then 2, CPU-bound background
    processes that this function starts and stops, for each thread policy; each row against the fair share."""
    import multiprocessing as mp

    from .synth import generate
    from .threads import usable_cores
    from .train import fit
    from .config import get_config

    root = work / "threads"
    shutil.rmtree(root, ignore_errors=True)
    generate(root / "data", per_class=4 if quick else 24, size=80, seed=0, progress=False)
    overrides = {
        "train.device": "cpu",
        "train.stage_epochs": 1,
        "train.fusion_epochs": 1,
        "train.deterministic": True,
        **({"train.batch_size": 8} if quick else {}),
    }
    (root / "overrides.json").write_text(json.dumps(overrides))
    fit(get_config("smoke", **overrides), root / "data", root / "base", until="main", progress=False)
    cores = usable_cores()
    loads = (0, 1) if quick else (0, 1, 2)
    tasks = ("fit",) if quick else ("fit", "features")
    policies = tuple(p for p in policies if not quick or p in ("today", "cores"))
    rows = []
    for k in loads:
        bg = [mp.get_context("spawn").Process(target=_busy, daemon=True) for _ in range(k)]
        for b in bg:
            b.start()
        time.sleep(0.5 if bg else 0)  # running before the child looks at the load
        try:
            for task in tasks:
                for policy in policies:  # interleaved: the policies of one row share the same moment
                    r = subprocess.run(
                        [
                            sys.executable,
                            "-c",
                            "import sys; from emotionlib.bench import _threads_child; _threads_child(*sys.argv[1:])",
                            str(root),
                            task,
                            policy,
                            "1" if quick else "3",
                        ],
                        capture_output=True,
                        text=True,
                        env=_policy_env(policy),
                    )
                    try:
                        m = json.loads(r.stdout.strip().splitlines()[-1])
                    except (IndexError, ValueError):
                        m = {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1][:200]}
                    rows.append({"task": task, "policy": policy, "background": k, **m})
        finally:
            for b in bg:
                b.terminate()
                b.join()
    idle = {(r["task"], r["policy"]): r for r in rows if r["background"] == 0 and "error" not in r}
    for r in rows:
        base = idle.get((r["task"], r["policy"]))
        if "error" in r or base is None:
            continue
        fair = fair_share(base["wall_s"], base["cpu_s"], cores, r["background"])
        r["slowdown"] = round(r["wall_s"] / base["wall_s"], 2)
        r["fair_share"] = round(fair, 2)
        r["of_fair_share"] = round(r["wall_s"] / base["wall_s"] / fair, 2)
        today = idle.get((r["task"], "today"))
        r["idle_vs_today"] = _ratio(base["wall_s"], today["wall_s"]) if today else float("nan")
        for key in ("wall_s", "cpu_s"):
            r[key] = round(r[key], 2)
    return {
        "cores": cores,
        "rows": rows,
        "goal": 1.25,
        "workload": f"smoke profile, 1 epoch per stage, {8 * (4 if quick else 24)} synthetic images of 80 px, median of {1 if quick else 3} runs; features: five crops + mirrors "
        "of the test split",
        "fair_share": "max(1, u (k + 1) / c): k background processes on c cores, u = CPU / wall seconds of the "
        "same policy's idle run",
    }


# ----------------------------------------------------------------------------- goals and the report


def goals(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue: the measured value, the target and whether it is met."""
    out = []

    def add(name, value, target, met, note=""):
        out.append({"goal": name, "value": value, "target": target, "met": bool(met), "note": note})

    ip = res.get("input_pipeline")
    if ip:
        later, first = ip["epochs"]["later"], ip["epochs"]["first"]
        add("input pipeline, later epoch: ours / torchvision", later["speedup"], ">= 3x", later["speedup"] >= 3)
        add(
            "input pipeline, first epoch: ours / torchvision",
            first["speedup"],
            ">= 1x",
            first["speedup"] >= 1,
            "includes writing the disk cache",
        )
        m = ip["rss_growth_mb"]["ours_disk_cache"]
        small, big = ip["memory_sizes"]
        g_small, g_big = m[str(small)], m[str(big)]
        per_image_mb = ip["disk_cache_mb"] / ip["images"]
        if g_small is not None and g_big is not None:
            # flat: the extra images add less than a tenth of what holding them in memory would
            add(
                f"input pipeline, RSS growth {small} -> {big} images (disk cache)",
                f"{g_small} -> {g_big} MB",
                "flat",
                g_big - g_small < 0.1 * per_image_mb * (big - small),
                f"an in-memory cache of the extra images would hold {per_image_mb * (big - small):.0f} MB",
            )
    ab = res.get("ablation")
    if ab:
        add(
            "ablation sweep: end-to-end / cached wall time",
            ab["speedup"],
            ">= 5x",
            ab["speedup"] >= 5,
            f"CPU time ratio {ab['cpu_speedup']}x; {len(ab['variants'])} variants",
        )
    tr = res.get("training", {}).get("cpu", {})
    for profile, r in tr.items():
        k = r["fastest"]
        frac = r["kinds"][k]["fraction_of_matmul"]
        add(
            f"training step at {r['crop']} px ({profile}): FLOP/s / matmul FLOP/s",
            frac,
            ">= 0.4",
            frac >= 0.4,
            f"fastest: {k}",
        )
    th = res.get("threads")
    if th:
        for r in th["rows"]:
            if r["background"] and "of_fair_share" in r:
                add(
                    f"{r['task']} beside {r['background']} busy process(es), {r['policy']}: slowdown / fair share",
                    r["of_fair_share"],
                    "<= 1.25",
                    r["of_fair_share"] <= 1.25,
                    f"{r['slowdown']}x vs fair {r['fair_share']}x",
                )
            elif not r["background"] and r["policy"] != "today" and "idle_vs_today" in r:
                add(
                    f"{r['task']} on idle cores, {r['policy']} / today",
                    r["idle_vs_today"],
                    "<= 1.1 (noise)",
                    r["idle_vs_today"] <= 1.1,
                )
    inf = res.get("inference")
    if inf:
        add(
            "cold start: emotionlib predict / import torch",
            inf["cold_start_ratio_to_import_torch"],
            "(reported)",
            True,
            f"{inf['cold_start_s']['emotionlib_predict']} s vs {inf['cold_start_s']['import_torch']} s",
        )
    return out


def to_markdown(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"# emotionlib bench{' (--quick)' if res['quick'] else ''}",
        "",
        f"CPU only: {m['cpu_count']} cores, {m['torch_threads']} torch thread(s), load average "
        f"{m['load_average']} at the start, {m.get('load_average_at_end')} at the end; torch {m['torch']}. A shared machine: the ratios, measured side by side in this "
        "run, are the result; absolute numbers are this machine at this moment."
        + ("" if m["cuda"] else " No GPU here: the bf16/NCCL paths are written but were not measured."),
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for g in res["goals"]:
        lines.append(
            f"| {g['goal']}{' (' + g['note'] + ')' if g['note'] else ''} | {g['value']} | {g['target']} | "
            f"{'yes' if g['met'] else 'NO'} |"
        )
    ip = res.get("input_pipeline")
    if ip:
        lines += [
            "",
            f"## Input pipeline ({ip['images']} JPEGs of about {ip['image_size'][0]}x{ip['image_size'][1]}, "
            f"{ip['mean_jpeg_kb']} KB; resize {ip['resize']}, five {ip['crop']}-px crops; batch "
            f"{ip['batch_size']}, {ip['num_workers']} workers)",
            "",
            "| epoch | ours (img/s) | torchvision (img/s) | speedup | CPU-time speedup |",
            "|---|---|---|---|---|",
        ]
        for name, e in ip["epochs"].items():
            name = f"{name} ({ip['loader_images']} images)" if "DataLoader" in name else name
            lines.append(
                f"| {name} | {e['ours_images_per_s']} | {e['torchvision_images_per_s']} | {e['speedup']}x | "
                f"{e['cpu_speedup']}x |"
            )
        a, b = ip["memory_sizes"]
        lines += [
            "",
            f"Same tensors as torchvision's: {ip['same_tensors_as_torchvision']}. Disk cache: "
            f"{ip['disk_cache_mb']} MB. Peak RSS growth over one pass, item by item (MB):",
            "",
            f"| loader | {a} images | {b} images |",
            "|---|---|---|",
        ]
        for k, v in ip["rss_growth_mb"].items():
            lines.append(f"| {k} | {v[str(a)]} | {v[str(b)]} |")
    ab = res.get("ablation")
    if ab:
        lines += [
            "",
            f"## Ablation sweep ({ab['profile']} profile, reduced: {ab['reduced']}; {ab['n_test']} test images)",
            "",
            f"Cached features: {ab['cached_wall_s']} s wall, {ab['cached_cpu_s']} s CPU (shared CNN "
            f"{ab['base_cnn_wall_s']} s / {ab['base_cnn_cpu_s']} s, features and heads {ab['sweep_wall_s']} s / "
            f"{ab['sweep_cpu_s']} s). End to end: {ab['end_to_end_wall_s']} s wall, {ab['end_to_end_cpu_s']} s "
            f"CPU: {ab['speedup']}x in wall time, {ab['cpu_speedup']}x in CPU time. The five-branch end-to-end "
            f"runs trained CNNs bit-identical to the shared one: {ab['end_to_end_cnns_identical_to_shared']}. "
            f"{ab['note'][0].upper() + ab['note'][1:]}.",
            "",
            "Where the seconds go (wall): "
            + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in ab["profile_s"].items())
            + ".",
            "",
            "| variant | cached: test acc | end to end: test acc | end to end (s) |",
            "|---|---|---|---|",
        ]
        for r in ab["per_variant"]:
            lines.append(
                f"| {r['variant']} | {r['cached_test_acc']} | {r['end_to_end_test_acc']} | {r['end_to_end_s']} |"
            )
    tr = res.get("training")
    if tr:
        lines += [
            "",
            f"## Training throughput ({tr['step']})",
            "",
            "| profile | crop | batch | GFLOP/step | matmul GFLOP/s | kind | img/s | GFLOP/s | of matmul |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for profile, r in tr["cpu"].items():
            for k, v in r["kinds"].items():
                if "error" in v:
                    lines.append(f"| {profile} | {r['crop']} | {r['batch_size']} | | | {k} | {v['error']} | | |")
                    continue
                extra = f" (compile {v['compile_s']} s)" if "compile_s" in v else ""
                lines.append(
                    f"| {profile} | {r['crop']} | {r['batch_size']} | {r['gflop_per_step']} | "
                    f"{r['matmul_gflop_per_s']} | {k}{extra} | {v['images_per_s']} | {v['gflop_per_s']} | "
                    f"{v['fraction_of_matmul']} |"
                )
        cu = tr.get("cuda", {})
        lines += [
            "",
            "CUDA: "
            + (
                cu["skipped"]
                if "skipped" in cu
                else f"{cu['device']}, bf16, batch {cu['batch_size']}: {cu['images_per_s']} img/s, "
                f"{cu['tflop_per_s']} TFLOP/s = {cu['fraction_of_matmul']} of a bf16 matmul, "
                f"{cu['fraction_of_datasheet_peak']} of the datasheet peak"
            ),
        ]
    th = res.get("threads")
    if th:
        lines += [
            "",
            f"## A machine that is not idle ({th['cores']} cores; {th['workload']})",
            "",
            f"Fair share: {th['fair_share']}. Goal: at most {th['goal']}x the fair share.",
            "",
            "| task | background | policy | threads | wall (s) | CPU (s) | slowdown | fair share | of fair | "
            "idle vs today |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in th["rows"]:
            if "error" in r:
                lines.append(f"| {r['task']} | {r['background']} | {r['policy']} | {r['error']} | | | | | | |")
                continue
            lines.append(
                f"| {r['task']} | {r['background']} | {r['policy']} | {r['threads']} | {r['wall_s']} | "
                f"{r['cpu_s']} | {r.get('slowdown', '')} | {r.get('fair_share', '')} | "
                f"{r.get('of_fair_share', '')} | {r.get('idle_vs_today', '') if not r['background'] else ''} |"
            )
    inf = res.get("inference")
    if inf:
        lines += [
            "",
            f"## Inference (CPU, {inf['weights']})",
            "",
            "| profile | crop | one image, five crops: median (ms) | p95 (ms) | batch | batch (img/s) |",
            "|---|---|---|---|---|---|",
        ]
        for k, v in inf.items():
            if isinstance(v, dict) and "latency_ms_median" in v:
                lines.append(
                    f"| {k} | {v['crop']} | {v['latency_ms_median']} | {v['latency_ms_p95']} | "
                    f"{v['batch_size']} | {v['batch_images_per_s']} |"
                )
        c = inf["cold_start_s"]
        lib = f", the same through the library {c['library_predict']} s" if "library_predict" in c else ""
        heavy = inf.get("cli_startup_imports")
        lines += [
            "",
            f"Cold start, one image ({inf['cold_start_profile']} model): `emotionlib predict` "
            f'{c["emotionlib_predict"]} s{lib}, `python -c "import torch"` {c["import_torch"]} s.'
            + (
                ""
                if heavy is None
                else f" Imported by the command line before it parses its arguments: "
                f"{', '.join(heavy) or 'none of the heavy ones'}."
            ),
        ]
    return "\n".join(lines) + "\n"


SECTIONS = ("input", "ablation", "training", "inference", "threads")


def run_bench(
    out: str | os.PathLike, quick: bool = False, only: tuple[str, ...] = SECTIONS, compile_: bool = False
) -> dict[str, Any]:
    """Run the benchmarks into `out` (bench.json, bench.md, and work/ for generated data); return the results."""
    from .utils import write_json, write_text

    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"quick": quick, "machine": machine_info()}
    t0 = time.perf_counter()
    # The sweep first: after the input section's gigabytes of in-memory cache, the first training run of the
    # process (the shared CNN) ran 40 % slower per epoch than the end-to-end runs after it.
    if "ablation" in only:
        res["ablation"] = bench_ablation(work, quick)
    if "input" in only:
        res["input_pipeline"] = bench_input_pipeline(work, quick)
    if "training" in only:
        res["training"] = bench_training(quick, compile_)
    if "inference" in only:
        images = make_photo_jpegs(work / "jpegs", 48 if quick else 1000)
        res["inference"] = bench_inference(work, quick, images)
    if "threads" in only:
        res["threads"] = bench_threads(work, quick)
    res["machine"]["load_average_at_end"] = machine_info()["load_average"]
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["goals"] = goals(res)
    write_json(out / "bench.json", res)
    write_text(out / "bench.md", to_markdown(res))
    return res


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmarks against the alternatives: input pipeline, ablation sweep, training and inference throughput",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for bench.json, bench.md and generated data")
    p.add_argument("--quick", action="store_true", help="a sub-minute version on tiny data (what the tests run)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument(
        "--compile",
        action="store_true",
        help="also measure torch.compile at the smoke size (its compilation takes minutes on a CPU)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="cuda: only the paper profile's bf16 training and inference images/s and the fraction of "
        "the chip's bf16 peak (needs an NVIDIA GPU)",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(a: argparse.Namespace) -> int:
    from .errors import ConfigError

    only = tuple(s.strip() for s in a.only.split(",") if s.strip())
    bad = sorted(set(only) - set(SECTIONS))
    if bad or not only:
        raise ConfigError(f"--only {a.only!r}: choose from {','.join(SECTIONS)}")
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "--device cuda: no CUDA device here (torch.cuda.is_available() is False); run it on "
                "a machine with an NVIDIA GPU, or leave --device out for the CPU benchmarks"
            )
        from .utils import write_json, write_text

        r = bench_gpu(a.quick)
        write_json(Path(a.out) / "bench-cuda.json", r)
        write_text(Path(a.out) / "bench-cuda.md", gpu_markdown(r))
        print(gpu_markdown(r), end="")
        return 0
    print(f"load average at the start: {machine_info()['load_average']} on {os.cpu_count()} cores", flush=True)
    res = run_bench(a.out, a.quick, only, compile_=a.compile)
    print((Path(a.out) / "bench.md").read_text(), end="")
    print(f"({res['seconds']} s; {Path(a.out) / 'bench.json'})")
    return 0


__all__ = [
    "run_bench",
    "bench_threads",
    "bench_gpu",
    "fair_share",
    "peak_bf16_tflops",
    "forward_flops_per_image",
    "fraction_of_peak",
    "bench_input_pipeline",
    "bench_ablation",
    "bench_training",
    "bench_inference",
    "make_photo_jpegs",
    "goals",
    "to_markdown",
    "add_parser",
]
