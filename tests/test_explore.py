"""The explorer's library part (notebook 09): composing, five crops, probabilities, the receptive-field box."""

from __future__ import annotations

import numpy as np
import pytest

from emotionlib import explore
from emotionlib.config import get_config
from emotionlib.errors import ConfigError
from emotionlib.model import UnifiedCNNRNN
from emotionlib.synth import CLASS_FACTORS, CLASSES

CFG = get_config("tiny", **{"train.device": "cpu"})


@pytest.fixture(scope="module")
def model():
    import torch

    torch.manual_seed(0)
    return UnifiedCNNRNN(CFG.model).eval()


def test_composing_follows_the_cues_and_changes_the_input():
    a = explore.compose(CLASS_FACTORS[CLASSES[0]], nuisance_seed=3)
    b = explore.compose({**CLASS_FACTORS[CLASSES[0]], "colour": "cool"}, nuisance_seed=3)
    assert a.size == b.size == (80, 80)
    assert np.array_equal(np.asarray(a), np.asarray(explore.compose(CLASS_FACTORS[CLASSES[0]], nuisance_seed=3)))
    xa, _ = explore.five_crops(a, CFG)
    xb, _ = explore.five_crops(b, CFG)
    assert not np.allclose(xa.numpy(), xb.numpy())  # one cue changed, so the prediction's input did


def test_five_crops_shape():
    x, raw = explore.five_crops(explore.compose(CLASS_FACTORS[CLASSES[5]]), CFG)
    c = CFG.data.crop
    assert tuple(x.shape) == (5, 3, c, c) and raw.shape == (5, c, c, 3) and raw.dtype == np.uint8


@pytest.mark.parametrize("layer", explore.POOLS)
def test_probabilities_sum_to_one_and_the_box_lies_inside(model, layer):
    r = explore.analyse(model, CFG, list(CLASSES), explore.compose(CLASS_FACTORS[CLASSES[2]]), layer, 1)
    assert list(r["probs"])[:5] == ["FC_1 (pool1)", "FC_2 (pool2)", "FC_3 (pool3)", "FC_4 (pool4)", "FC_5 (main)"]
    assert len(r["probs"]) == 6
    for p in r["probs"].values():
        assert p.shape == (8,) and abs(p.sum() - 1) < 1e-5 and (p >= 0).all()
    left, top, right, bottom = r["box"]
    c = CFG.data.crop
    assert 0 <= left < right <= c and 0 <= top < bottom <= c
    table = explore.probability_table(r)
    assert list(table.columns) == [*CLASSES, "prediction"] and "prediction:" in explore.describe(r)


def test_a_channel_out_of_range_is_a_one_line_error(model):
    with pytest.raises(ConfigError, match="channels"):
        explore.analyse(model, CFG, list(CLASSES), explore.compose(CLASS_FACTORS[CLASSES[0]]), "pool1", 10_000)
