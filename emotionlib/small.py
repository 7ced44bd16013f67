"""The small-dataset protocol of Sec. 4.4 (ArtPhoto, IAPS-subset) and a chart like Fig. 7 and 8.

    a model pre-trained on the large set (a finished run folder)
    -> frozen features of every small-set image, averaged over its five crops
    -> a new last layer: one binary linear classifier per class, "one against all" (Machajdik & Hanbury 2010)
    -> stratified K-fold cross-validation (K = 5) -> true-positive rate per class, and its mean

Two rates per class, both written (METRICS):

- `ova_tpr`, the default of the table and the chart: Sec. 4.4 adopts "the same 'one against all' strategy" as
  Machajdik & Hanbury, whose protocol scores each one-against-all classifier on its own binary task ("is it
  class c?"): the true-positive rate of the class averaged over its positive and negative examples
  (evaluate.one_against_all_tpr). Chance is 0.5, whatever the number of classes: the scale of Fig. 7 and 8.
- `recall`, a second, labelled metric: the n-way decision (the class whose classifier scores highest) and the
  recall of each class, the diagonal of the confusion matrix as Fig. 6 reads FI. Chance is 1 / n.

Every compared method goes through the same folds and gets a new last layer of one binary linear
classifier per class on its frozen features: the unified CNN-RNN's (the input of its last FC: H of the
Bi-GRU, Eq. 10) and optionally ResNet-101 pool5 a logistic unit each (the paper fine-tunes their last FC),
the hand-crafted subset of `emotionlib.baselines` and AlexNet fc7 a linear SVM each (their names say SVM).
AlexNet and ResNet-101 load ImageNet weights from a local file, else start from random initialisation,
said so in their label. A class with fewer than `min_count` images is left out with a warning (the paper
leaves out IAPS anger, 8 images).

The paper's Fig. 7 and 8 are bar charts without printed numbers, so no paper values are stored here.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from . import __version__
from .baselines import (
    FEATURE_SIZE,
    alexnet_fc7,
    build_network,
    cnn_input_size,
    five_crop_features,
    handcrafted_matrix,
    linear_fc,
    linear_svm,
    load_weights,
    resnet_pool5,
    resolve_weights,
)
from .data import DatasetIndex, open_dataset, scan_artphoto, scan_iaps
from .errors import ConfigError, DataError, RunFolderError
from .evaluate import confusion_matrix, one_against_all_tpr, per_class_tpr
from .methods import DEFAULT_SMALL_METHODS, SMALL_LAYOUTS, SMALL_METHODS
from .figures import plot_tpr, save_table
from .utils import file_sha256, read_json, relative_path, resolve_device, write_json

LAYOUTS, METHODS, DEFAULT_METHODS = SMALL_LAYOUTS, SMALL_METHODS, DEFAULT_SMALL_METHODS
#: The new last layer of each method, as the paper describes the methods: "fine-tune the last fully connected
#: layer" for ours (and for ResNet-101, a fine-tuned network in Sec. 4.2), a linear SVM for the "+ SVM" baselines.
#: Either way one binary linear classifier per class on standardised features, one against all.
CLASSIFIERS: dict[str, Callable[[int], Any]] = {
    "ours": linear_fc,
    "resnet101": linear_fc,
    "handcrafted-svm": linear_svm,
    "alexnet-svm": linear_svm,
}
CLASSIFIER_NAMES = {
    linear_fc: "new last FC: one logistic unit per class (L2, C=1, balanced)",
    linear_svm: "one linear SVM per class (C=1, balanced)",
}
#: The two per-class rates (the module docstring says which is which and why), in the order tables show them;
#: metrics.json holds per_class_<key>, mean_<key> and fold_mean_<key> for each, and the folder <key>.csv and
#: fig7_<key>.png. The first is the default.
METRICS = ("ova_tpr", "recall")
PAPER_NOTE = (
    "The paper reports Sec. 4.4 only as bar charts (Fig. 7 ArtPhoto, Fig. 8 IAPS-subset) without printed "
    "numbers; every number here is this run's."
)


#: The built-in stand-in for ArtPhoto: the synthetic generator in ArtPhoto's flat layout (`sad_1.jpg`), with
#: another seed than the large set (0) and shifted nuisances (other hues within each palette, smaller objects,
#: more clutter, harsher light), so that, as in Sec. 4.4, the small set is not drawn like the large one.
SYNTHETIC_SMALL = {"per_class": 25, "layout": "artphoto", "seed": 1, "shift": 0.5, "label_noise": 0.0}


# ----------------------------------------------------------------------------- data, classes, folds


def stand_in_note(large_dir: str | os.PathLike, small_dir: str | os.PathLike) -> str | None:
    """A plain sentence when the model was trained on real data but the small dataset is the synthetic stand-in
    (e.g. a paper run on FI whose notebook 07 kept its default): Sec. 4.4 would then say nothing about ArtPhoto."""
    if (Path(small_dir) / "synth_meta.json").exists() and not (Path(large_dir) / "synth_meta.json").exists():
        return (
            f"The model was trained on {Path(large_dir).name}, real data, but the small dataset here is the "
            f"built-in synthetic stand-in ({Path(small_dir).name}): these numbers are not Sec. 4.4 on ArtPhoto "
            "or IAPS. Give small_data_dir (emotionlib reproduce --small-data DIR --layout ...)."
        )
    return None


def ensure_small_data(path: str | os.PathLike, progress: bool = False) -> Path:
    """The small dataset folder: generated (SYNTHETIC_SMALL) when missing; a folder of real images is left alone."""
    from .synth import ensure

    path = Path(path)
    if path.is_dir() and any(path.iterdir()) and not (path / "synth_meta.json").exists():
        return path  # ArtPhoto or IAPS as downloaded
    return ensure(path, progress=progress, **SYNTHETIC_SMALL)


def open_small_dataset(data: str | os.PathLike, layout: str, progress: bool = False) -> DatasetIndex:
    """artphoto: flat <emotion>_<n>.jpg (`sad` = sadness); iaps: DIR/images + DIR/mikels_{negative,positive}.csv
    (data/README.md); fi: one folder per emotion."""
    data = Path(data)
    if layout == "artphoto":
        return scan_artphoto(data, progress=progress)
    if layout == "iaps":
        # min_count=0: the protocol's own exclusion below warns once, the same way for every layout
        return scan_iaps(
            data / "images", data / "mikels_negative.csv", data / "mikels_positive.csv", min_count=0, progress=progress
        )
    if layout == "fi":
        return open_dataset(data, progress=progress)
    raise ConfigError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")


def exclude_small_classes(index: DatasetIndex, min_count: int) -> tuple[DatasetIndex, dict[str, int]]:
    """Leave out every class with fewer than `min_count` images, with a warning naming it (Sec. 4.4: "only eight
    images in the category anger ... we are unable to train a classifier for this category")."""
    counts = index.counts()
    excluded = {c: n for c, n in counts.items() if n < min_count}
    for c, n in excluded.items():
        warnings.warn(
            f"{index.root}: leaving out class {c!r}: {n} image(s) < min_count={min_count}, too few to "
            "train and test a classifier (the paper leaves out IAPS anger, 8 images)",
            stacklevel=2,
        )
    kept = [c for c in index.classes if c not in excluded]
    if len(kept) < 2:
        raise DataError(
            f"{index.root}: {len(kept)} class(es) have at least {min_count} images; the protocol needs "
            "two (lower --min-count, or add images)"
        )
    return DatasetIndex(index.root, kept, [s for s in index.samples if s.label in kept], list(index.skipped)), excluded


def stratified_folds(targets: Sequence[int], folds: int, seed: int = 0) -> np.ndarray:
    """The test fold (0..folds-1) of every image: each image is in exactly one test fold, and every fold holds
    each class in proportion (scikit-learn's StratifiedKFold, shuffled with `seed`)."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(targets)
    out = np.full(len(y), -1, dtype=int)
    for k, (_, test) in enumerate(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)):
        out[test] = k
    return out


def cross_validated_scores(
    x: np.ndarray,
    y: np.ndarray,
    fold: np.ndarray,
    seed: int = 0,
    make_classifier: Callable[[int], Any] = linear_svm,
    num_classes: int | None = None,
) -> np.ndarray:
    """(images, classes): each image's decision value under every class's binary classifier, the classifiers
    trained on the other folds (scaler included: nothing of a test fold is seen in training); -inf for a class
    absent from the training folds. A class's binary classifier says "this class" where its value is positive
    (what a linear classifier's predict does): `scores > 0`; the n-way decision is `scores.argmax(1)`."""
    n = int(y.max()) + 1 if num_classes is None else num_classes
    scores = np.full((len(y), n), -np.inf)
    for k in np.unique(fold):
        test = fold == k
        clf = make_classifier(seed).fit(x[~test], y[~test])
        scores[np.ix_(test, clf.classes_)] = clf.decision_function(x[test])
    return scores


def _fit_quietly(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, int]:
    """fn() and the number of solver convergence warnings it raised: counted in metrics.json, not printed."""
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        out = fn()
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out, sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def metric_chance(metric: str, n_classes: int) -> float:
    """What a classifier that ignores the image scores: 0.5 on each binary task, 1 / n for the n-way recall."""
    return 0.5 if _metric(metric) == "ova_tpr" else 1 / n_classes


def metric_label(metric: str, n_classes: int) -> str:
    """The name tables, charts and notebooks give a metric (it names its chance level)."""
    if _metric(metric) == "ova_tpr":
        return "one-against-all TPR: each class's binary classifier, (TPR + TNR) / 2, chance 0.5"
    return f"{n_classes}-way recall: the class scored highest, chance 1/{n_classes}"


def _metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"metric={metric!r}: choose one of {', '.join(METRICS)}")
    return metric


def tpr_summary(y: np.ndarray, scores: np.ndarray, fold: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Both rates of METRICS per class over all test folds together (every image counted once), their means over
    the classes, and each fold's mean alone (to show the spread); the n-way accuracy and confusion matrix.
    `scores`: cross_validated_scores."""
    n = len(classes)
    pred, binary = scores.argmax(1), scores > 0
    rates = {
        "ova_tpr": lambda m: one_against_all_tpr(y[m], binary[m], n),
        "recall": lambda m: per_class_tpr(y[m], pred[m], n),
    }
    out: dict[str, Any] = {}
    for metric, rate in rates.items():
        r = rate(np.ones(len(y), dtype=bool))
        out[f"per_class_{metric}"] = {c: float(t) for c, t in zip(classes, r)}
        out[f"mean_{metric}"] = float(r.mean())
        out[f"fold_mean_{metric}"] = [float(rate(fold == k).mean()) for k in np.unique(fold)]
    out.update(accuracy=float((pred == y).mean()), confusion=confusion_matrix(y, pred, n).round(6).tolist())
    return out


# ----------------------------------------------------------------------------- features of each method


def unified_features(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """The input of the model's last FC, which the protocol replaces (UnifiedCNNRNN.last_fc_input)."""
    return lambda x: model.last_fc_input(model.extract(x))


def method_label(method: str, variant: str, provenance: dict[str, Any] | None) -> str:
    init = "" if provenance is None else " (ImageNet)" if provenance["pretrained"] else " (random init)"
    return {
        "ours": f"Ours: unified CNN-RNN ({variant}), pre-trained",
        "handcrafted-svm": "Hand-crafted subset (M&H, Zhao)",
        "alexnet-svm": f"AlexNet fc7{init}",
        "resnet101": f"ResNet-101 pool5{init}",
    }[method]


# ----------------------------------------------------------------------------- the protocol


def run_small(
    pretrained_run: str | os.PathLike,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    folds: int = 5,
    layout: str = "artphoto",
    min_count: int = 10,
    seed: int = 0,
    device: str = "auto",
    methods: Sequence[str] = DEFAULT_METHODS,
    alexnet_weights: str | os.PathLike | None = None,
    resnet_weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sec. 4.4 on one small dataset; writes out_dir/{config.json, folds.csv, predictions.csv, metrics.json} and,
    for each of METRICS, <metric>.csv and the chart fig7_<metric>.png / .pdf (ova_tpr.csv: the one-against-all
    rate, the default; recall.csv: the n-way recall), and returns the metrics.

    A folder that already holds this exact protocol's results returns them (rerunning a notebook is cheap);
    any other non-empty folder is refused. Weights: None = torchvision's cached ImageNet file if present,
    "none" = random initialisation, or a state-dict path.
    """
    from .checkpoint import load_run
    from .data import make_loader
    from .utils import derive_seed

    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"--methods {','.join(unknown) or '(none)'}: choose from {', '.join(METHODS)}")
    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    if folds < 2:
        raise ConfigError(f"--folds {folds}: cross-validation needs at least 2 folds (the paper uses 5)")
    if min_count < folds:
        raise ConfigError(f"--min-count {min_count} is below --folds {folds}: every class needs an image in each fold")
    run = Path(pretrained_run)
    if not run.is_dir():
        raise RunFolderError(f"--run {run} does not exist; train the large-set model first (emotionlib train)")
    if not Path(data_dir).exists():
        raise DataError(f"--data {data_dir} does not exist; see data/README.md for ArtPhoto and IAPS-subset")
    weights = {"alexnet-svm": ("alexnet", alexnet_weights), "resnet101": ("resnet101", resnet_weights)}
    provenance = {m: resolve_weights(*weights[m])[1] for m in methods if m in weights}
    model_file = run / "checkpoints" / "model.pt"
    if not model_file.exists():
        raise RunFolderError(f"--run {run} holds no trained model ({model_file} is missing); train it first")
    # resolved paths and the model's hash: the same protocol whichever way the folders are spelt, and a
    # retrained model is a different protocol; so is a folder written before METRICS held both rates
    settings = {
        "pretrained_run": str(run.resolve()),
        "pretrained_sha256": file_sha256(model_file),
        "data": str(Path(data_dir).resolve()),
        "layout": layout,
        "folds": folds,
        "min_count": min_count,
        "seed": seed,
        "methods": methods,
        "weights": {m: p["weights"] for m, p in provenance.items()},
        "metrics": list(METRICS),
    }
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()):
        saved = read_json(out / "config.json").get("settings", {}) if (out / "config.json").exists() else None
        if saved == settings and (out / "metrics.json").exists():
            return read_json(out / "metrics.json")
        what = (
            "something else"
            if saved is None
            else f"a protocol run with other {', '.join(k for k in settings if saved.get(k) != settings[k]) or 'settings'}"
        )
        raise RunFolderError(f"--out {out} already holds {what}; choose another --out or delete it")

    dev = resolve_device(device)
    model, cfg, _ = load_run(run, dev)
    pre = read_json(run / "run.json") if (run / "run.json").exists() else {}
    index, excluded = exclude_small_classes(open_small_dataset(data_dir, layout, progress), min_count)
    classes, y = index.classes, np.array(index.targets)
    fold = stratified_folds(y, folds, seed)
    loader = make_loader(index, classes, cfg, train=False)  # the five crops of the pre-trained run's geometry

    results: dict[str, Any] = {}
    scores: dict[str, np.ndarray] = {}
    for m in methods:
        if m == "ours":
            x, yy, idx = five_crop_features(
                unified_features(model), loader, dev, desc="unified CNN-RNN", progress=progress
            )
            info = {"features": "input of the last FC (H for RNN fusions; the top FC with model.top_fc)"}
        elif m == "handcrafted-svm":
            x, yy, idx = handcrafted_matrix(index, progress=progress), y, np.arange(len(y))
            info = {"features": f"hand-crafted subset, {x.shape[1]} values at {FEATURE_SIZE} px"}
        else:
            arch, w = weights[m]
            torch.manual_seed(derive_seed(seed, m, "init"))
            net = build_network(arch)
            path, _ = resolve_weights(arch, w)
            if path is not None:
                load_weights(net, path, arch)
            net = net.to(dev).eval()
            fn = (
                (lambda z, net=net: alexnet_fc7(net, z))
                if m == "alexnet-svm"
                else (lambda z, net=net: resnet_pool5(net, z))
            )
            side = cnn_input_size(m, cfg)
            x, yy, idx = five_crop_features(fn, loader, dev, side, desc=m, progress=progress)
            info = {"features": f"{'fc7' if m == 'alexnet-svm' else 'pool5'} at {side} px", **provenance[m]}
            del net
        x, yy = x[np.argsort(idx)], yy[np.argsort(idx)]  # back to index order (the loader does not shuffle)
        assert (yy == y).all()
        scores[m], unconverged = _fit_quietly(
            lambda: cross_validated_scores(x, y, fold, seed, CLASSIFIERS[m], len(classes))
        )
        label = method_label(m, cfg.model.variant, provenance.get(m))
        results[m] = {
            "label": label,
            "feature_dim": int(x.shape[1]),
            **info,
            "classifier": CLASSIFIER_NAMES[CLASSIFIERS[m]],
            "convergence_warnings": unconverged,
            **tpr_summary(y, scores[m], fold, classes),
        }

    n = len(classes)
    metrics = {
        "protocol": "Sec. 4.4: frozen features, a new last layer of one binary linear classifier per class "
        "(one against all), "
        f"stratified {folds}-fold cross-validation, true-positive rate per class: each class's "
        "binary classifier on its own task (ova_tpr, the default), and the n-way recall (recall)",
        "metrics": {k: {"label": metric_label(k, n), "chance": metric_chance(k, n)} for k in METRICS},
        "classes": classes,
        "counts": index.counts(),
        "excluded_classes": excluded,
        "n_images": len(y),
        "folds": folds,
        "seed": seed,
        "layout": layout,
        "data": str(data_dir),
        "pretrained": {
            "run": str(pretrained_run),
            "variant": cfg.model.variant,
            "profile": cfg.profile,
            "classes": pre.get("classes"),
            "sha256": settings["pretrained_sha256"],
        },
        "methods": results,
        "paper_note": PAPER_NOTE,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"settings": settings, "emotionlib": __version__})
    rel = [relative_path(s.path, index.root) for s in index.samples]
    save_table(
        pd.DataFrame({"path": rel, "label": [s.label for s in index.samples], "fold": fold}),
        out / "folds.csv",
        index=False,
    )
    # per method: the n-way decision, and the classes whose own binary classifier said yes (the rate of Sec. 4.4)
    decisions = {}
    for m in methods:
        decisions[m] = [classes[p] for p in scores[m].argmax(1)]
        decisions[f"{m}:positive"] = ["|".join(c for c, b in zip(classes, row) if b) for row in scores[m] > 0]
    save_table(
        pd.DataFrame({"path": rel, "label": [s.label for s in index.samples], "fold": fold, **decisions}),
        out / "predictions.csv",
        index=False,
    )
    import matplotlib.pyplot as plt

    from .figures import save_figure

    for metric in METRICS:
        table = tpr_table(results, classes, metric)
        save_table(table.reset_index(), out / f"{metric}.csv", index=False)
        fig = plot_tpr(table, title=f"{folds}-fold CV on {Path(data_dir).name} (cf. Fig. 7)", metric=metric)
        save_figure(fig, out / f"fig7_{metric}")
        plt.close(fig)
    write_json(out / "metrics.json", metrics)  # last: its presence marks a finished protocol
    return metrics


def tpr_table(results: dict[str, Any], classes: list[str], metric: str = "ova_tpr") -> pd.DataFrame:
    """One row per method (its label), one column per class and `mean` last, of one of METRICS (default the
    one-against-all rate): the numbers behind Fig. 7 / 8."""
    _metric(metric)
    rows = {
        r["label"]: [r[f"per_class_{metric}"][c] for c in classes] + [r[f"mean_{metric}"]] for r in results.values()
    }
    df = pd.DataFrame.from_dict(rows, orient="index", columns=[*classes, "mean"])
    df.index.name = "method"
    return df


def load_table(out_dir: str | os.PathLike, metric: str = "ova_tpr") -> pd.DataFrame:
    """<metric>.csv of a finished protocol, as tpr_table returns it."""
    return pd.read_csv(Path(out_dir) / f"{_metric(metric)}.csv", index_col="method")


def summary_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The mean over the classes of both rates, one row per method, and the chance level of each as the last row:
    the last group of Fig. 7 on both scales."""
    n = len(metrics["classes"])
    cols = {
        metric_label(k, n).split(":")[0]: [r[f"mean_{k}"] for r in metrics["methods"].values()] + [metric_chance(k, n)]
        for k in METRICS
    }
    return pd.DataFrame(
        cols,
        index=pd.Index([r["label"] for r in metrics["methods"].values()] + ["chance"], name="mean over the classes"),
    )


# ----------------------------------------------------------------------------- command line


__all__ = [
    "run_small",
    "ensure_small_data",
    "SYNTHETIC_SMALL",
    "stratified_folds",
    "exclude_small_classes",
    "cross_validated_scores",
    "tpr_summary",
    "tpr_table",
    "load_table",
    "summary_table",
    "plot_tpr",
    "unified_features",
    "open_small_dataset",
    "metric_chance",
    "metric_label",
    "METRICS",
    "METHODS",
    "DEFAULT_METHODS",
    "LAYOUTS",
    "PAPER_NOTE",
    "stand_in_note",
]
