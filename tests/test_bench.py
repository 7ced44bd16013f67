"""The decoded-image disk cache returns exactly what decoding returns, and `emotionlib bench --quick` writes its report.

Speed is measured by `emotionlib bench`, not asserted here: on a shared machine a timed test only measures the
neighbours.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

import emotionlib.data as data_mod
from emotionlib.cli import main
from emotionlib.config import get_config
from emotionlib.data import EmotionDataset, Sample, load_image, resize_shorter, to_uint8_tensor
from emotionlib.model import UnifiedCNNRNN
from emotionlib.train import load_checkpoint, load_model_state, save_checkpoint


def photo(path: Path, size=(60, 44), seed=0, fmt="JPEG", exif_orientation=None) -> Path:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    kw = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif
    im.save(path, fmt, **kw)
    return path


def images(tmp_path) -> list[Sample]:
    return [
        Sample(photo(tmp_path / "img" / "a.jpg", (60, 44), 0), "awe"),
        Sample(photo(tmp_path / "img" / "b.png", (41, 70), 1, "PNG"), "fear"),  # portrait
        Sample(photo(tmp_path / "img" / "c.jpg", (50, 36), 2, exif_orientation=6), "awe"),
    ]  # rotated by EXIF


def datasets(samples, cache_dir, train, resize=40, crop=32, seed=3):
    kw = dict(resize=resize, crop=crop, train=train, seed=seed, cache=False)
    c2i = {"awe": 0, "fear": 1}
    return EmotionDataset(samples, c2i, **kw), EmotionDataset(samples, c2i, disk_cache=cache_dir, **kw)


def entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.rglob("*.npy"))


@pytest.mark.parametrize("train", [False, True])
def test_disk_cache_returns_exactly_the_decoded_tensors(tmp_path, monkeypatch, train):
    samples = images(tmp_path)
    plain, cached = datasets(samples, tmp_path / "cache", train)
    assert tuple(plain.resized(2).shape) == (3, 55, 40)  # the EXIF rotation (portrait) is applied before caching
    for epoch in (0, 7):
        plain.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(samples)):  # first pass fills the cache, later ones read it
            x, y, j = cached[i]
            ref, ry, rj = plain[i]
            assert torch.equal(x, ref) and (y, j) == (ry, rj)
            assert x.shape == ((3, 32, 32) if train else (5, 3, 32, 32))
    assert len(entries(tmp_path / "cache")) == 3
    # from now on nothing is decoded: a dataset over the same cache works with the decoder gone
    decoded = [to_uint8_tensor(resize_shorter(load_image(s.path), 40)) for s in samples]
    items = [plain[i][0] for i in range(len(samples))]
    monkeypatch.setattr(data_mod, "load_image", lambda *a, **k: pytest.fail("decoded although cached"))
    _, again = datasets(samples, tmp_path / "cache", train)
    again.set_epoch(7)
    for i in range(len(samples)):
        assert torch.equal(again.resized(i), decoded[i]) and torch.equal(again[i][0], items[i])


def test_disk_cache_entry_is_invalidated_when_the_file_changes(tmp_path):
    samples = images(tmp_path)[:1]
    plain, cached = datasets(samples, tmp_path / "cache", train=False)
    before = cached.resized(0).clone()
    path = samples[0].path
    st = path.stat()
    photo(path, (64, 48), seed=9)  # another picture, another size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = cached.resized(0)
    assert tuple(after.shape) == (3, 40, 53) and not torch.equal(after[:, :, :53], before[:, :, :53])
    assert torch.equal(after, plain.resized(0))
    assert len(entries(tmp_path / "cache")) == 2  # the stale entry stays, unread
    # the same bytes rewritten with a new modification time, and another resize: new entries again
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    assert torch.equal(cached.resized(0), after)
    _, other = datasets(samples, tmp_path / "cache", train=False, resize=48)
    assert tuple(other.resized(0).shape) == (3, 48, 64)
    assert len(entries(tmp_path / "cache")) == 4


def test_damaged_cache_entry_is_decoded_again_and_rewritten(tmp_path):
    samples = images(tmp_path)[:1]
    plain, cached = datasets(samples, tmp_path / "cache", train=False)
    cached.resized(0)
    (entry,) = entries(tmp_path / "cache")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as by a full disk
    assert torch.equal(cached.resized(0), plain.resized(0))
    assert np.load(entry).shape == (40, 54, 3)  # rewritten whole (HWC, the decoder's layout)


def test_missing_file_is_still_a_data_error_with_a_disk_cache(tmp_path):
    samples = images(tmp_path)[:1]
    _, cached = datasets(samples, tmp_path / "cache", train=False)
    samples[0].path.unlink()
    with pytest.raises(data_mod.DataError, match="a.jpg: file does not exist"):
        cached[0]


@pytest.mark.parametrize("size", [(500, 400), (400, 500), (400, 400), (401, 400), (37, 91), (91, 37)])
def test_resize_shorter_is_torchvisions_resize(tmp_path, size):
    im = load_image(photo(tmp_path / "x.png", size, fmt="PNG"))
    for target in (40, 400):
        ref = TF.pil_to_tensor(TF.resize(im, target, InterpolationMode.BILINEAR, antialias=True))
        got = to_uint8_tensor(resize_shorter(im, target))
        assert got.shape == ref.shape and torch.equal(got, ref)


def test_a_channels_last_checkpoint_loads_channels_last(tmp_path):
    cfg = get_config("tiny")
    torch.manual_seed(0)
    trained = UnifiedCNNRNN(cfg.model).to(memory_format=torch.channels_last).eval()
    save_checkpoint(tmp_path / "cl.pt", {"model": trained.state_dict()})
    save_checkpoint(tmp_path / "plain.pt", {"model": UnifiedCNNRNN(cfg.model).state_dict()})
    loaded, plain = UnifiedCNNRNN(cfg.model).eval(), UnifiedCNNRNN(cfg.model)
    load_model_state(loaded, load_checkpoint(tmp_path / "cl.pt")["model"], tmp_path / "cl.pt")
    load_model_state(plain, load_checkpoint(tmp_path / "plain.pt")["model"], tmp_path / "plain.pt")
    w = loaded.trunk.stages[1].convs[0].weight  # 5x5: the layouts differ
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    assert plain.trunk.stages[1].convs[0].weight.is_contiguous()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained(x), atol=1e-6)


@pytest.mark.slow
def test_quick_bench_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--out", str(out), "--quick"]) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    assert md in printed
    for key in ("machine", "input_pipeline", "ablation", "training", "inference", "goals", "quick", "seconds"):
        assert key in res, key
    assert res["quick"] is True and res["machine"]["torch_threads"] >= 1
    ip = res["input_pipeline"]
    assert ip["same_tensors_as_torchvision"] is True  # the two pipelines compute the same crops
    assert set(ip["epochs"]) == {"first", "later", "later, DataLoader"}
    for e in ip["epochs"].values():
        assert e["ours_images_per_s"] > 0 and e["torchvision_images_per_s"] > 0 and e["speedup"] > 0
    assert set(ip["rss_growth_mb"]) == {"ours_disk_cache", "torchvision", "ours_memory_cache"}
    assert len(list((out / "work" / "decoded-cache").rglob("*.npy"))) == ip["images"]
    ab = res["ablation"]
    assert ab["end_to_end_cnns_identical_to_shared"] is True  # what the shared CNN saves is real redundancy
    assert [r["variant"] for r in ab["per_variant"]] == ab["variants"]
    for r in ab["per_variant"]:
        assert 0 <= r["cached_test_acc"] <= 1 and 0 <= r["end_to_end_test_acc"] <= 1
    assert ab["speedup"] > 0 and ab["cached_wall_s"] > 0
    tiny = res["training"]["cpu"]["tiny"]
    assert set(tiny["kinds"]) == {"contiguous", "channels_last"} and tiny["fastest"] in tiny["kinds"]
    for k in tiny["kinds"].values():
        assert k["images_per_s"] > 0 and 0 < k["fraction_of_matmul"]
    assert "skipped" in res["training"]["cuda"] or res["training"]["cuda"]["images_per_s"] > 0
    inf = res["inference"]
    assert inf["tiny"]["latency_ms_p95"] >= inf["tiny"]["latency_ms_median"] > 0
    assert set(inf["cold_start_s"]) >= {"import_torch", "emotionlib_predict"} and "errors" not in inf
    names = [g["goal"] for g in res["goals"]]
    assert any("later epoch" in n for n in names) and any("ablation" in n for n in names)
    assert all(set(g) == {"goal", "value", "target", "met", "note"} for g in res["goals"])
    for heading in (
        "| goal | measured | target | met |",
        "## Input pipeline",
        "## Ablation sweep",
        "## Training throughput",
        "## Inference",
    ):
        assert heading in md


def test_bench_refuses_an_unknown_section(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "b"), "--only", "input,gpu"]) == 2
    assert "--only 'input,gpu': choose from input,ablation,training,inference" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_bench_cuda_refuses_without_a_gpu_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--out", str(tmp_path / "b"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emotionlib bench: error: --device cuda: no CUDA device here")
    assert not (tmp_path / "b").exists()


def test_bf16_peaks_by_device_name():
    from emotionlib.bench import peak_bf16_tflops

    assert peak_bf16_tflops("NVIDIA H200") == peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_bf16_tflops("NVIDIA H100 PCIe") == 756.0  # the longer name wins
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_bf16_tflops("NVIDIA A10") == 125.0
    assert peak_bf16_tflops("Some Future GPU") is None


def test_flops_per_image_and_fraction_of_peak():
    from emotionlib.bench import forward_flops_per_image, fraction_of_peak

    conv = torch.nn.Conv2d(3, 8, 3, bias=False)  # 2 * (3 * 3 * 3) FLOPs per output value, 8 * 30 * 30 values
    assert forward_flops_per_image(conv, 32) == 2 * 27 * 8 * 30 * 30
    model = UnifiedCNNRNN(get_config("tiny").model).eval()
    f = forward_flops_per_image(model, 48)
    assert f > 0 and forward_flops_per_image(model, 96) > 3 * f  # four times the pixels
    assert fraction_of_peak(1e12, 100.0, 1000.0) == pytest.approx(0.1)  # 100 TFLOP/s of 1000
    assert fraction_of_peak(3 * 1e9, 1000.0, 989.4) == pytest.approx(3e12 / 989.4e12)
    assert fraction_of_peak(1e9, 10.0, None) is None


def test_fair_share():
    from emotionlib.bench import fair_share

    assert fair_share(10.0, 20.0, cores=2, k=1) == 2.0  # both cores idle, one of two with a neighbour: 2x
    assert fair_share(10.0, 20.0, cores=2, k=2) == 3.0
    assert fair_share(10.0, 10.0, cores=2, k=1) == 1.0  # single-threaded: the free core costs nothing
    assert fair_share(10.0, 10.0, cores=2, k=2) == 1.5
    assert fair_share(10.0, 50.0, cores=2, k=1) == 2.0  # u capped at the cores
