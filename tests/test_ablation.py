"""The ablation sweep (Table 1) and the Fig. 6 comparison, on tiny generated data and toy features."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from emotionlib import ablation
from emotionlib.ablation import Features, ensemble_probs, extract_features, run_sweep, train_head
from emotionlib.config import get_config
from emotionlib.data import DatasetIndex, open_dataset
from emotionlib.errors import ConfigError, RunFolderError
from emotionlib.evaluate import predict_probs
from emotionlib.model import UnifiedCNNRNN
from emotionlib.paper import FIG6_MLDRNET, FIG6_OURS, TABLE1_ROW, TABLE1_VARIANTS
from emotionlib.synth import generate
from emotionlib.train import fit, make_loader


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("data") / "synth", per_class=8, size=64, progress=False)


def tiny(**over):
    return get_config("tiny", **{"train.device": "cpu", **over})


def part_of(data: Path, n: int = 12) -> DatasetIndex:
    index = open_dataset(data)
    return DatasetIndex(index.root, index.classes, index.samples[:: len(index.samples) // n][:n], [])


def toy_features(
    n_per_class: int,
    views: int,
    t: int = 5,
    d: int = 16,
    classes: int = 4,
    seed: int = 0,
    noise_seed: int = 1,
    separation: float = 3.0,
) -> Features:
    """Each class has its own mean feature vector at every step (drawn from `seed`); noise from `noise_seed`."""
    means = torch.randn(classes, t, d, generator=torch.Generator().manual_seed(seed)) * separation
    g = torch.Generator().manual_seed(noise_seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    v = (means[y][:, None] + 0.5 * torch.randn(len(y), views, t, d, generator=g)).relu()
    logits = torch.randn(len(y), views, t, classes, generator=g)
    names = [f"c{i}" for i in range(classes)]
    return Features(
        v,
        logits,
        y,
        ["branch1", "branch2", "branch3", "branch4", "main"][-t:],
        names,
        [f"img{i}.jpg" for i in range(len(y))],
        "toy",
    )


# ----------------------------------------------------------------------------- feature cache


def test_features_are_cached_once_and_reused(data, tmp_path):
    cfg = tiny()
    torch.manual_seed(0)
    model = UnifiedCNNRNN(cfg.model).eval()
    part = part_of(data)
    cache = tmp_path / "sweep" / "features" / "train.pt"
    f1 = extract_features(model, part, cfg, "five+mirror", cache=cache)
    assert f1.V.shape == (12, 10, 5, cfg.model.branch_feature) and f1.logits.shape == (12, 10, 5, 8)
    assert f1.keys == ["branch1", "branch2", "branch3", "branch4", "main"]
    assert f1.targets.tolist() == part.targets
    assert cache.exists() and not list(cache.parent.glob(".*.tmp"))  # written atomically, no leftovers
    stamp = cache.stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("the cache should have been reused")

    model.trunk.forward = boom
    f2 = extract_features(model, part, cfg, "five+mirror", cache=cache)
    assert torch.equal(f2.V, f1.V) and torch.equal(f2.logits, f1.logits) and cache.stat().st_mtime_ns == stamp
    assert f2.paths == f1.paths and f2.keys == f1.keys and f2.views == "five+mirror"

    # other weights: the cache is not reused but replaced
    del model.trunk.forward
    with torch.no_grad():
        model.main.fc_5[0].bias.add_(1.0)
    f3 = extract_features(model, part, cfg, "five+mirror", cache=cache)
    assert not torch.equal(f3.V[:, :, 4], f1.V[:, :, 4]) and torch.equal(f3.V[:, :, :4], f1.V[:, :, :4])
    assert cache.stat().st_mtime_ns != stamp


def test_views_are_the_five_crops_then_their_mirrors(data):
    cfg = tiny()
    torch.manual_seed(1)
    model = UnifiedCNNRNN(cfg.model).eval()
    part = part_of(data, 4)
    ten = extract_features(model, part, cfg, "five+mirror")
    five = extract_features(model, part, cfg, "five")
    centre = extract_features(model, part, cfg, "center")
    torch.testing.assert_close(ten.V[:, :5], five.V)
    torch.testing.assert_close(centre.V[:, 0], five.V[:, 4])
    x, _, _ = next(iter(make_loader(part, part.classes, cfg, train=False)))  # (B, 5, 3, H, W)
    with torch.no_grad():
        mirrored = model.extract(x[:, 2].flip(-1), ["main"])["main"][0]
    torch.testing.assert_close(ten.V[:, 7, 4], mirrored)  # view 7 = mirror of view 2 (bottom-left)


def test_heads_train_on_the_mirrors_only_where_the_cnn_did():
    """data.mirror: the sweep's heads see the training views the CNN stages saw (the five crops, mirrored or not)."""
    assert ablation.split_views(tiny()) == {"train": "five+mirror", "val": "five", "test": "five"}
    assert ablation.split_views(tiny(**{"data.mirror": False}))["train"] == "five"


def test_one_trunk_pass_serves_cnns_that_share_the_trunk(data):
    """bigru4 / bigru6 copy the base trunk: one shared pass gives each model what its own extract() gives."""
    cfg = tiny()
    torch.manual_seed(3)
    base = UnifiedCNNRNN(cfg.model).eval()
    others = {}
    for v in ("bigru4", "bigru6"):
        m = UnifiedCNNRNN(replace(cfg.model, variant=v))
        own = m.state_dict()
        own.update({k: t for k, t in base.state_dict().items() if k.startswith("trunk.")})
        m.load_state_dict(own)
        others[v] = m.eval()
    part = part_of(data, 4)
    got = ablation.extract_shared({"base": base, **others}, part, cfg, "five")
    x, _, _ = next(iter(make_loader(part, part.classes, cfg, train=False)))
    for name, m in {"base": base, **others}.items():
        with torch.no_grad():
            ref = m.extract(x.reshape(-1, *x.shape[2:]))
        assert got[name].keys == m.feature_keys
        for t, k in enumerate(m.feature_keys):
            torch.testing.assert_close(got[name].V[:, :, t].reshape(-1, ref[k][0].shape[1]), ref[k][0])
            torch.testing.assert_close(got[name].logits[:, :, t].reshape(-1, 8), ref[k][1])
    assert got["bigru6"].keys[0] == "branch0" and got["bigru4"].V.shape[2] == 4
    with pytest.raises(ConfigError, match="do not share one trunk"):
        ablation.extract_shared({"a": base, "b": UnifiedCNNRNN(cfg.model)}, part, cfg, "five")


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize("variant", ["bigru", "lstm", "max"])
def test_head_on_separable_features_beats_chance(variant):
    cfg = tiny(**{"train.fusion_epochs": 15, "train.lr_step": 100, "train.batch_size": 16, "train.fusion_lr": 3e-3})
    # the same class means, fresh noise for the test images
    feats = {"train": toy_features(40, 10, noise_seed=1), "test": toy_features(15, 5, noise_seed=2)}
    head, m = train_head(variant, feats, cfg)
    assert m["test_accuracy"] >= 0.9  # chance is 0.25
    assert len(m["history"]) == 15 and m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    assert m["n_test"] == 60 and set(m["per_class_tpr"]) == {"c0", "c1", "c2", "c3"}


def test_head_on_noise_stays_near_chance():
    cfg = tiny(**{"train.fusion_epochs": 5})
    g = torch.Generator().manual_seed(3)
    noise = lambda n, v: Features(
        torch.randn(n, v, 5, 16, generator=g),
        torch.zeros(n, v, 5, 4),  # noqa: E731
        torch.arange(4).repeat(n // 4),
        ["branch1", "branch2", "branch3", "branch4", "main"],
        ["a", "b", "c", "d"],
        [str(i) for i in range(n)],
        "toy",
    )
    _, m = train_head("gru", {"train": noise(200, 10), "test": noise(400, 5)}, cfg)
    assert 0.15 < m["test_accuracy"] < 0.37


def test_head_refuses_features_with_another_branch_count():
    feats = {"train": toy_features(2, 1, t=5), "test": toy_features(2, 1, t=5)}
    with pytest.raises(ConfigError, match="bigru4.*4 branches.*5"):
        train_head("bigru4", feats, tiny())
    with pytest.raises(ConfigError, match="end to end"):
        train_head("softmax", {"train": toy_features(2, 1, t=1), "test": toy_features(2, 1, t=1)}, tiny())


def test_ensemble_is_the_mean_of_the_branch_softmaxes():
    f = toy_features(3, 5)
    expected = np.zeros((12, 4))
    for i in range(12):
        for v in range(5):
            expected[i] += sum(F.softmax(f.logits[i, v, k], 0).numpy() for k in range(5)) / 5 / 5
    np.testing.assert_allclose(ensemble_probs(f), expected, rtol=1e-5, atol=1e-7)
    head, m = train_head("ensemble", {"train": f, "test": f}, tiny())
    assert head is None and m["history"] == []
    assert m["test_accuracy"] == float((expected.argmax(1) == f.targets.numpy()).mean())


def test_ensemble_on_cached_features_equals_the_models_own_ensemble(data):
    """The cached logits give what UnifiedCNNRNN(variant="ensemble") predicts with five-crop evaluation."""
    cfg = tiny(**{"model.variant": "ensemble"})
    torch.manual_seed(2)
    model = UnifiedCNNRNN(cfg.model).eval()
    part = part_of(data, 8)
    p_model, y, _ = predict_probs(model, make_loader(part, part.classes, cfg, train=False), torch.device("cpu"))
    p_cache = ensemble_probs(extract_features(model, part, cfg, "five"))
    np.testing.assert_allclose(p_cache, p_model, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- the sweep


@pytest.fixture(scope="module")
def base_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("base") / "train"
    fit(tiny(**{"train.deterministic": True}), data, run, progress=False)  # CNN stages, then the fusion
    return run


SMALL_SWEEP = ("softmax", "ensemble", "gru", "bigru", "bigru4", "bigru6", "avg")


@pytest.fixture(scope="module")
def sweep(base_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, run_sweep(base_run, None, out, variants=SMALL_SWEEP, progress=False)


def test_sweep_table_has_every_variant_and_the_papers_numbers(sweep, base_run):
    out, df = sweep
    assert tuple(df.columns) == ablation.TABLE_COLUMNS
    assert list(df["variant"]) == [*SMALL_SWEEP, "bigru (fine-tuned)"]
    for v, row, paper in zip(df["variant"], df["table1_row"], df["paper_FI_acc"]):
        name = v.split(" ")[0]
        if name in TABLE1_VARIANTS:
            assert paper == TABLE1_VARIANTS[name] and row == TABLE1_ROW[name]
        else:
            assert np.isnan(paper) and "not in Table 1" in row
    assert df.loc[df.variant == "bigru", "paper_FI_acc"].item() == 73.03
    assert df["this_run_test_acc"].between(0, 100).all()
    metrics = __import__("json").loads((base_run / "metrics.json").read_text())
    assert df.iloc[-1]["this_run_test_acc"] == round(100 * metrics["test_accuracy"], 2)
    assert df.set_index("variant").loc["softmax", "trained"].startswith("end to end")
    label = f"{base_run.parent.name}/train"  # never an absolute path of this machine
    assert df.set_index("variant").loc["gru", "trained"] == f"head on the frozen CNN of {label}, cached features"
    on_disk = pd.read_csv(out / "ablation.csv")
    assert list(on_disk["variant"]) == list(df["variant"])
    for v in SMALL_SWEEP:
        assert (out / v / "metrics.json").exists()
    assert (out / "features" / "train.pt").exists() and (out / "bigru4" / "features" / "train.pt").exists()
    # bigru4 / bigru6 trained only what the base lacks: the trunk is the base's, bit for bit
    base = torch.load(base_run / "checkpoints" / "stage-main.pt", weights_only=True)["model"]
    for v in ("bigru4", "bigru6"):
        own = torch.load(out / v / "cnn" / "checkpoints" / "stage-main.pt", weights_only=True)["model"]
        for k in (k for k in own if k.startswith("trunk.") or k.startswith("branches.branch1.")):
            assert torch.equal(own[k], base[k]), (v, k)
        assert own["main.fc_5.0.weight"].shape != base["main.fc_5.0.weight"].shape


def test_claims_put_the_papers_comparison_beside_this_runs():
    df = pd.DataFrame(
        {"variant": ["ensemble", "softmax", "bigru", "gru", "max"], "this_run_test_acc": [50.0, 40.0, 60.0, 60.0, 70.0]}
    )
    c = ablation.compare_claims(df).set_index("comparison")
    assert list(c.index) == ["ensemble vs softmax", "bigru vs ensemble", "bigru vs gru", "bigru vs max"]
    assert c.loc["ensemble vs softmax", "paper_FI_diff"] == round(66.78 - 59.61, 2)
    assert c.loc["ensemble vs softmax", "this_run_diff"] == 10.0 and c.loc["ensemble vs softmax", "higher_here"]
    assert c.loc["bigru vs gru", "this_run_diff"] == 0.0 and not c.loc["bigru vs gru", "higher_here"]  # a tie
    assert np.isnan(c.loc["bigru vs max", "paper_FI_diff"]) and not c.loc["bigru vs max", "higher_here"]


def test_sweep_is_idempotent(sweep, base_run, monkeypatch):
    out, df = sweep

    def boom(*a, **k):
        raise AssertionError("a finished variant was trained again")

    monkeypatch.setattr(ablation, "train_head", boom)
    monkeypatch.setattr(ablation, "_fit_variant", boom)
    again = run_sweep(base_run, None, out, variants=SMALL_SWEEP, progress=False)
    pd.testing.assert_frame_equal(again, df)


def test_sweep_all_variants_share_the_base_split(sweep, base_run):
    out, _ = sweep
    base_split = (base_run / "split.csv").read_text()
    for v in ("softmax", "bigru4", "bigru6"):
        folder = out / v / ("run" if v == "softmax" else "cnn")
        assert (folder / "split.csv").read_text() == base_split


def test_sweep_folder_of_another_base_is_refused(sweep, base_run, tmp_path):
    import shutil

    other = tmp_path / "other" / "train"
    shutil.copytree(base_run, other)
    state = torch.load(other / "checkpoints" / "stage-main.pt", weights_only=True)
    state["model"]["main.classifier.bias"] += 1.0  # "retrained": another CNN in the same place
    torch.save(state, other / "checkpoints" / "stage-main.pt")
    out, _ = sweep
    with pytest.raises(RunFolderError, match="another base CNN"):
        run_sweep(other, None, out, variants=SMALL_SWEEP, progress=False)


def test_sweep_needs_a_trained_cnn(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="stage-main.pt"):
        run_sweep(tmp_path / "empty", None, tmp_path / "out")


def test_sweep_refuses_another_architecture(base_run, tmp_path):
    with pytest.raises(ConfigError, match="model.rnn_hidden"):
        run_sweep(base_run, None, tmp_path / "out", variants=("gru",), cfg=tiny(**{"model.rnn_hidden": 8}))


def test_sweep_chart_has_one_bar_per_row(sweep):
    import matplotlib.pyplot as plt

    _, df = sweep
    fig = ablation.plot_sweep(df, "this run (tiny)")
    ax, axp = fig.axes
    assert len(ax.patches) == len(df)
    assert [round(p.get_width(), 2) for p in ax.patches] == list(df["this_run_test_acc"])
    offsets = axp.collections[0].get_offsets()
    assert sorted(offsets[:, 0].tolist()) == sorted(df["paper_FI_acc"].dropna().tolist())
    plt.close(fig)


# ----------------------------------------------------------------------------- Fig. 6


def test_tpr_table_puts_the_papers_diagonals_beside_the_run():
    classes = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]
    m = {"classes": classes, "per_class_tpr": {c: i / 10 for i, c in enumerate(classes)}}
    df = ablation.tpr_table(m, "this run (synthetic, smoke)")
    assert list(df.columns) == ["this run (synthetic, smoke)", "MldrNet, FI (paper)", "Bi-GRU (Zhu et al.), FI (paper)"]
    assert df.loc["fear", "MldrNet, FI (paper)"] == 0.31 and df.loc["fear", "Bi-GRU (Zhu et al.), FI (paper)"] == 0.44
    assert df.loc["amusement", "Bi-GRU (Zhu et al.), FI (paper)"] == 0.78
    assert df.loc["anger", "this run (synthetic, smoke)"] == 0.1
    assert df.loc["mean", "MldrNet, FI (paper)"] == pytest.approx(np.diag(FIG6_MLDRNET).mean(), abs=6e-4)
    assert df.loc["mean", "Bi-GRU (Zhu et al.), FI (paper)"] == pytest.approx(np.diag(FIG6_OURS).mean(), abs=6e-4)
    assert df.loc["min", "MldrNet, FI (paper)"] == 0.31 and df.loc["min", "Bi-GRU (Zhu et al.), FI (paper)"] == 0.44
    assert df.loc["min", "this run (synthetic, smoke)"] == 0.0
    assert list(df.index[-3:]) == ["mean", "min", "std"]


def test_confusion_figure_has_three_panels_on_one_scale():
    import matplotlib.pyplot as plt

    cm = np.eye(8)
    fig = ablation.plot_confusions(
        cm,
        ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"],
        "this run (synthetic, smoke)",
    )
    heat = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in heat] == [
        "this run (synthetic, smoke)",
        "MldrNet, FI (paper)",
        "Bi-GRU (Zhu et al.), FI (paper)",
    ]
    for a in heat:
        assert a.collections[0].get_clim() == (0.0, 1.0)
        assert [t.get_text() for t in a.get_yticklabels()][6] == "fear"
    np.testing.assert_allclose(np.asarray(heat[1].collections[0].get_array()).reshape(8, 8), FIG6_MLDRNET)
    plt.close(fig)


def test_top_confusions_are_the_largest_off_diagonal_entries():
    top = ablation.top_confusions(
        FIG6_OURS, ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"], k=2
    )
    assert top == [("excitement", "amusement", 0.17), ("fear", "sadness", 0.14)]


def test_cue_errors_count_the_cues_an_error_gets_wrong():
    from emotionlib.synth import CLASSES

    cm = np.eye(8) * 8
    cm[0, 0], cm[0, 1] = 6, 2  # amusement -> anger: same colour and texture, shape wrong
    cm[4, 4], cm[4, 0] = 6, 2  # disgust -> amusement: colour wrong only
    shares = ablation.cue_errors(cm, CLASSES)
    assert shares.to_dict() == pytest.approx({"colour": 0.5, "texture": 0.0, "shape": 0.5})
    assert np.isnan(ablation.cue_errors(np.eye(8), CLASSES)["colour"])  # no errors, no shares


def _tiny_bigru_features(n=12, views=2, seed=0):
    from emotionlib.model import UnifiedCNNRNN

    cfg = get_config("tiny")
    model = UnifiedCNNRNN(replace(cfg.model, variant="bigru")).eval()
    g = torch.Generator().manual_seed(seed)
    T, D = len(model.feature_keys), model.head.rnn.fwd.W_v.in_features
    V = torch.randn(n, views, T, D, generator=g)
    V[:, :, 2] = 0  # V_3 is zero already: zeroing it must change nothing
    feats = Features(
        V=V,
        logits=torch.zeros(n, views, T, cfg.model.num_classes),
        targets=torch.randint(0, cfg.model.num_classes, (n,), generator=g),
        keys=list(model.feature_keys),
        classes=[str(i) for i in range(cfg.model.num_classes)],
        paths=[f"{i}.jpg" for i in range(n)],
        views="five",
    )
    return model, feats


def test_zeroed_steps_mask_the_step_they_name():
    model, feats = _tiny_bigru_features()
    df = ablation.zeroed_steps(model, feats)
    assert list(df["zeroed"])[0] == "none" and len(df) == 1 + len(feats.keys)
    assert df.loc[df["zeroed"].str.startswith("V_3"), "drop (points)"].item() == 0
    assert (df["test accuracy (%)"].between(0, 100)).all()


def test_update_gates_follow_eq7_and_index_the_backward_pass_by_step():
    model, feats = _tiny_bigru_features()
    rnn = model.head.rnn
    with torch.no_grad():
        rnn.fwd.W_hz.weight.zero_()  # z_t = sigma(W_vz V_t + b_z): no dependence on the state
        rnn.bwd.load_state_dict(rnn.fwd.state_dict())
    gates = ablation.update_gates(model, feats)
    assert list(gates.columns) == ["forward: mean z_t", "backward: mean z_t"]
    assert gates.iloc[:, 0].tolist() == pytest.approx(gates.iloc[:, 1].tolist(), abs=1e-3)
    with torch.no_grad():
        _, vz, _ = rnn.fwd.W_v(feats.V[:, :, 0].reshape(-1, feats.V.shape[-1])).chunk(3, dim=1)
    assert gates.iloc[0, 0] == pytest.approx(float(torch.sigmoid(vz).mean()), abs=1e-3)
