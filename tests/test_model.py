"""The architecture of Fig. 2 / docs/architecture.md, the paper's GRU cell (Eq. 6-10) and the variants of Table 1."""

import math

import pytest
import torch

from emotionlib.config import get_config
from emotionlib.errors import ConfigError
from emotionlib.model import (
    VARIANTS,
    ModelConfig,
    PaperGRU,
    PaperGRUCell,
    TorchRNN,
    UnifiedCNNRNN,
    count_parameters,
    feature_map_sizes,
    parse_variant,
    receptive_field,
)


def tiny(variant="bigru", **kw):
    return get_config("tiny", **{"model.variant": variant, **{f"model.{k}": v for k, v in kw.items()}}).model


def test_paper_geometry_and_size():
    cfg = ModelConfig()
    sizes = feature_map_sizes(cfg, 375)
    assert [sizes[f"pool{i}"] for i in range(1, 5)] == [45, 22, 10, 4]
    trunk = UnifiedCNNRNN(cfg).trunk
    assert 8.6e6 < count_parameters(trunk) < 8.8e6  # "about 8.7 M trunk parameters"
    x = torch.zeros(1, 3, 375, 375)
    maps = trunk(x)
    assert maps["pool1"].shape == (1, 128, 45, 45) and maps["pool4"].shape == (1, 512, 4, 4)


def test_smoke_profile_keeps_the_four_pooling_levels():
    """64-px crops (README, Profiles): 60 after conv1 5x5/1, then pools of 29/14/6/2; the paper's 375 px: 45/22/10/4.
    The branches pool every map to 2x2 in smoke, so none is smaller than its branch's pool."""
    cfg = get_config("smoke")
    sizes = feature_map_sizes(cfg.model, cfg.data.crop)
    assert [sizes[f"pool{i}"] for i in range(1, 5)] == [29, 14, 6, 2]
    assert min(sizes[f"pool{i}"] for i in range(1, 5)) >= cfg.model.branch_pool
    paper = get_config("paper")
    assert [feature_map_sizes(paper.model, paper.data.crop)[f"pool{i}"] for i in range(1, 5)] == [45, 22, 10, 4]


def test_receptive_fields_by_hand():
    cfg = ModelConfig()  # conv 11/4, 1x1, pool 3/2, then (conv 5 pad 2, 1x1, pool 3/2) x 3
    assert receptive_field(cfg, "conv1")[:2] == (11, 4)
    assert receptive_field(cfg, "pool1")[:2] == (11 + 2 * 4, 8)
    assert receptive_field(cfg, "pool2")[:2] == (19 + 4 * 8 + 2 * 8, 16)
    assert receptive_field(cfg, "pool3")[:2] == (67 + 4 * 16 + 2 * 16, 32)
    assert receptive_field(cfg, "pool4")[:2] == (163 + 4 * 32 + 2 * 32, 64)
    with pytest.raises(ConfigError):
        receptive_field(cfg, "pool9")


def _set_scalar_cell(cell, vr, vz, vh, br, bz, bh, hr, hz, hh):
    with torch.no_grad():
        cell.W_v.weight.copy_(torch.tensor([[vr], [vz], [vh]]))
        cell.W_v.bias.copy_(torch.tensor([br, bz, bh]))
        cell.W_hr.weight.fill_(hr)
        cell.W_hz.weight.fill_(hz)
        cell.W_hh.weight.fill_(hh)


def test_paper_gru_cell_matches_hand_computed_eq_6_to_9():
    cell = PaperGRUCell(1, 1)
    w = dict(vr=0.5, vz=-0.3, vh=0.8, br=0.1, bz=0.2, bh=-0.1, hr=0.7, hz=-0.4, hh=1.2)
    _set_scalar_cell(cell, **w)
    v, h = 2.0, 0.6
    sig = lambda a: 1 / (1 + math.exp(-a))
    r = sig(w["vr"] * v + w["hr"] * h + w["br"])  # Eq. 6
    z = sig(w["vz"] * v + w["hz"] * h + w["bz"])  # Eq. 7
    h_tilde = math.tanh(w["vh"] * v + w["hh"] * (r * h) + w["bh"])  # Eq. 8: reset gate inside the product
    expected = z * h + (1 - z) * h_tilde  # Eq. 9
    got = cell(torch.tensor([[v]]), torch.tensor([[h]])).item()
    assert got == pytest.approx(expected, abs=1e-6)
    # nn.GRU applies r after the product: r * (W_hn h + b_hn). With a recurrent bias the two cells differ.
    torch_style = z * h + (1 - z) * math.tanh(w["vh"] * v + r * (w["hh"] * h + 0.3) + w["bh"])
    paper_with_bias = z * h + (1 - z) * math.tanh(w["vh"] * v + w["hh"] * (r * h) + w["bh"] + 0.3)
    assert abs(torch_style - paper_with_bias) > 1e-3


def test_paper_gru_two_steps_and_bidirectional_H():
    torch.manual_seed(0)
    gru = PaperGRU(3, 4, bidirectional=True)
    seq = torch.randn(2, 5, 3)
    H = gru(seq)
    assert H.shape == (2, 8)
    h = torch.zeros(2, 4)
    for t in range(5):
        h = gru.fwd(seq[:, t], h)
    hb = torch.zeros(2, 4)
    for t in reversed(range(5)):  # the backward GRU reads V_5 -> V_1
        hb = gru.bwd(seq[:, t], hb)
    torch.testing.assert_close(H, torch.cat([h, hb], 1))  # Eq. 10


def test_torch_rnn_returns_last_states_of_both_directions():
    torch.manual_seed(0)
    rnn = TorchRNN("gru", 3, 4, bidirectional=True)
    seq = torch.randn(2, 5, 3)
    out, _ = rnn.rnn(seq)
    torch.testing.assert_close(rnn(seq), torch.cat([out[:, -1, :4], out[:, 0, 4:]], 1))


@pytest.mark.parametrize("name", list(VARIANTS) + ["gru6", "lstm4", "max6"])
def test_every_variant_builds_and_predicts(name):
    torch.manual_seed(0)
    model = UnifiedCNNRNN(tiny(name, num_classes=5)).eval()
    x = torch.randn(3, 3, 48, 48)
    logits = model(x)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()
    fusion, n = parse_variant(name)
    assert len(model.feature_keys) == max(n, 1)


def test_ensemble_averages_the_branch_classifiers():
    torch.manual_seed(0)
    model = UnifiedCNNRNN(tiny("ensemble")).eval()
    x = torch.randn(2, 3, 48, 48)
    feats = model.extract(x)
    mean = torch.stack([torch.softmax(feats[k][1], 1) for k in model.feature_keys]).mean(0)
    torch.testing.assert_close(model(x).exp(), mean)
    assert len(model.feature_keys) == 5


def test_unknown_variant_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown variant 'bigru9'"):
        parse_variant("bigru9")
    with pytest.raises(ConfigError):
        parse_variant("softmax5")


@pytest.mark.parametrize(
    "variant,expected",
    [
        ("bigru", [("branch1", [0]), ("branch2", [1]), ("branch3", [2]), ("branch4", [3]), ("main", [])]),
        ("bigru4", [("branch1", [0]), ("branch2", [1]), ("branch3", [2]), ("main", [3])]),
        # one branch per stage (Sec. 4.1): branch 0 trains with trunk stage 1, branch 1 follows on it frozen
        (
            "bigru6",
            [("branch0", [0]), ("branch1", []), ("branch2", [1]), ("branch3", [2]), ("branch4", [3]), ("main", [])],
        ),
        ("softmax", [("main", [0, 1, 2, 3])]),
    ],
)
def test_multi_stage_schedule(variant, expected):
    model = UnifiedCNNRNN(tiny(variant))
    assert [(s.name, s.trunk_stages) for s in model.cnn_stages()] == expected
    assert all(s.heads == [s.name] for s in model.cnn_stages())  # each stage trains and logs one head


def test_extract_runs_the_trunk_only_as_deep_as_needed():
    model = UnifiedCNNRNN(tiny("bigru")).eval()
    calls = []
    for i, st in enumerate(model.trunk.stages):
        st.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    out = model.extract(torch.randn(2, 3, 48, 48), ["branch1"])
    assert list(out) == ["branch1"] and calls == [0]
    calls.clear()
    model.extract(torch.randn(2, 3, 48, 48), ["main"])
    assert calls == [0, 1, 2, 3]


def test_rnn_cell_choice_and_regularised_weights():
    paper = UnifiedCNNRNN(tiny("bigru", rnn_cell="paper"))
    lib = UnifiedCNNRNN(tiny("bigru", rnn_cell="torch"))
    assert isinstance(paper.head.rnn, PaperGRU) and isinstance(lib.head.rnn, TorchRNN)
    assert len(paper.head.weight_matrices()) == 8 and all(w.dim() == 2 for w in paper.head.weight_matrices())
    assert len(lib.head.weight_matrices()) == 4  # weight_ih, weight_hh for each direction


def test_top_fc_puts_an_fc_of_512_between_H_and_the_classifier():
    """model.top_fc: the other reading of Sec. 4.1's "1,024, 512 and 512 neurons" (docs/architecture.md)."""
    torch.manual_seed(0)
    plain = UnifiedCNNRNN(tiny("bigru"))
    assert not any(k.startswith("head.top") for k in plain.state_dict())  # off by default: the checkpoints of before
    assert plain.head.fc.in_features == 2 * plain.cfg.rnn_hidden  # the FC after H is the classifier
    model = UnifiedCNNRNN(tiny("bigru", top_fc=True)).eval()
    top = model.head.top[0]
    assert (top.in_features, top.out_features) == (2 * model.cfg.rnn_hidden, model.cfg.fused_feature)
    assert model.head.fc.in_features == model.cfg.fused_feature
    seq = torch.randn(3, 5, model.cfg.branch_feature)
    with torch.no_grad():
        h = model.head.rnn(seq)
        torch.testing.assert_close(model.head(seq), model.head.fc(torch.relu(top(h))))
    assert len(model.head.weight_matrices()) == len(plain.head.weight_matrices())  # Eq. 11's theta: the GRU's alone
    pooled = UnifiedCNNRNN(tiny("max", top_fc=True)).eval()
    assert pooled.head.fc.in_features == pooled.cfg.fused_feature and pooled(torch.randn(2, 3, 48, 48)).shape == (2, 8)
    with pytest.raises(ConfigError, match="model.top_fc='yes'"):
        tiny("bigru", top_fc="yes")


def test_without_branches_the_contrastive_feature_is_taken_before_dropout():
    """Eq. 3-4 read V = FC of the main branch before its dropout, as for FC_i; the classifier still sees dropout."""
    torch.manual_seed(0)
    model = UnifiedCNNRNN(tiny("softmax", branch_dropout=0.5)).train()
    x = torch.randn(4, 3, 48, 48)
    (v1, logits1), (v2, logits2) = model.extract(x, ["main"])["main"], model.extract(x, ["main"])["main"]
    torch.testing.assert_close(v1, v2)  # no dropout on V
    assert not torch.allclose(logits1, logits2)  # dropout before the classifier
    assert (v1 > 0).float().mean() > 0.3  # ReLU features, not half of them dropped to zero
    model.eval()
    v, logits = model.extract(x, ["main"])["main"]
    torch.testing.assert_close(logits, model.main.classifier(v))
