"""The one way from a checkpoint file to (model, configuration), and the run folder's shared helpers."""

from __future__ import annotations

import pytest
import torch

from emotionlib.checkpoint import load_model, save_checkpoint
from emotionlib.config import get_config
from emotionlib.data import DatasetIndex, Sample
from emotionlib.errors import CheckpointError
from emotionlib.model import UnifiedCNNRNN
from emotionlib.utils import file_sha256, relative_path


def test_load_model_gives_back_the_saved_weights_in_eval_mode(tmp_path):
    cfg = get_config("tiny")
    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model)
    save_checkpoint(tmp_path / "stage-main.pt", {"model": model.state_dict(), "config": cfg.to_dict()})
    loaded, cfg2, ckpt = load_model(tmp_path / "stage-main.pt")
    assert cfg2 == cfg and not loaded.training and set(ckpt) == {"model", "config"}
    x = torch.rand(2, 3, cfg.data.crop, cfg.data.crop)
    torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_load_model_names_what_a_checkpoint_lacks(tmp_path):
    save_checkpoint(tmp_path / "w.pt", {"model": {}})
    with pytest.raises(CheckpointError, match="w.pt lacks config"):
        load_model(tmp_path / "w.pt")


def test_relative_path_inside_and_outside_the_dataset(tmp_path):
    root = tmp_path / "FI"
    assert relative_path(root / "fear" / "a.jpg", root) == "fear/a.jpg"
    outside = tmp_path / "elsewhere" / "b.jpg"
    assert relative_path(outside, root) == outside.resolve().as_posix()  # still names the file


def test_file_sha256_is_the_prefix_of_the_files_hash(tmp_path):
    import hashlib

    (tmp_path / "f").write_bytes(b"emotion")
    assert file_sha256(tmp_path / "f") == hashlib.sha256(b"emotion").hexdigest()[:16]


def test_parts_keeps_every_split_even_an_empty_one(tmp_path):
    samples = [Sample(tmp_path / f"{i}.jpg", "fear", split="train" if i else "test") for i in range(3)]
    parts = DatasetIndex(tmp_path, ["fear", "sadness"], samples).parts()
    assert {k: len(v) for k, v in parts.items()} == {"train": 2, "val": 0, "test": 1}
    assert all(p.classes == ["fear", "sadness"] for p in parts.values())
