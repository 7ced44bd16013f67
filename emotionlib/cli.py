"""The `emotionlib` command line: synth, data, train, evaluate, predict, variants, reproduce.

Every user error ends in one line on stderr and exit code 2; nothing is written before the arguments are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import EmotionLibError
from .threads import add_argument as add_threads_argument


def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="generate the built-in synthetic dataset (FI folder layout)")
    p.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    p.add_argument("--per-class", type=int, default=None, help="images per class (default 200)")
    p.add_argument(
        "--builtin",
        action="store_true",
        help="the built-in dataset's settings (data/README.md): 200 per class, 80 px, 10 %% label noise",
    )
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label-noise", type=float, default=None, help="probability of a wrong folder label (default 0)")
    p.add_argument("--layout", choices=("fi", "artphoto"), default="fi")
    p.add_argument("--shift", type=float, default=0.0, help="shift of the nuisance distribution in [0, 1]")
    p.set_defaults(func=cmd_synth)


def cmd_synth(a) -> int:
    from .synth import BUILTIN, PER_CLASS, generate

    # synth's defaults, without importing it to build the parser
    base = BUILTIN if a.builtin else {"per_class": PER_CLASS, "size": 128, "label_noise": 0.0}
    per_class = base["per_class"] if a.per_class is None else a.per_class
    size = base["size"] if a.size is None else a.size
    noise = base["label_noise"] if a.label_noise is None else a.label_noise
    out = generate(
        a.out,
        per_class=per_class,
        size=size,
        seed=a.seed,
        label_noise=noise,
        layout=a.layout,
        shift=a.shift,
        progress=True,
    )
    print(f"synthetic dataset in {out}")
    return 0


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="inspect a dataset: classes, counts, image sizes, unusable files")
    p.add_argument("path", type=Path, help="dataset folder (FI layout, flat <emotion>_<id>.jpg) or manifest CSV")
    p.add_argument("--skipped", type=Path, help="also write the unusable files to this CSV")
    p.add_argument("--max-pixels", type=int, default=None, help="decompression-bomb limit (width x height)")
    p.set_defaults(func=cmd_data)


def cmd_data(a) -> int:
    import pandas as pd

    from .data import open_dataset, summarise

    kw = {} if a.max_pixels is None else {"max_pixels": a.max_pixels}
    index = open_dataset(a.path, progress=True, **kw)
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print(
            f"{a.path}: {len(index.samples)} usable images in {len(index.classes)} classes, "
            f"{len(index.skipped)} skipped"
        )
        print(summarise(index).to_string())
    if index.skipped:
        print("\nskipped files:")
        for path, reason in index.skipped:
            print(f"  {path}: {reason}")
    if a.skipped:
        index.write_skipped(a.skipped)
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a variant stage by stage into a run folder")
    p.add_argument("--data", type=Path, help="dataset folder or manifest CSV (not needed with --resume)")
    p.add_argument("--out", required=True, type=Path, help="run folder (must not exist unless --resume)")
    p.add_argument("--profile", default="smoke", help="smoke (CPU, built-in data) or paper (Sec. 4.1, GPU)")
    p.add_argument("--variant", default=None, help="fusion variant of Table 1 (see `emotionlib variants`)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="epochs per stage (CNN stages and fusion)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1, mps")
    p.add_argument("--split", type=Path, default=None, help="reuse a split CSV so the test set never moves")
    p.add_argument("--init-from", type=Path, default=None, help="start from another run's trained CNN")
    p.add_argument("--rnn-cell", choices=("paper", "torch"), default=None, help="the paper's GRU cell or nn.GRU")
    p.add_argument("--finetune-lr", type=float, default=None, help="CNN learning rate in the fusion stage (0: frozen)")
    p.add_argument("--deterministic", action="store_true", help="bit-reproducible CPU runs")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.NAME=VALUE",
        help="any configuration field, e.g. --set train.lr=0.01 (repeatable)",
    )
    p.add_argument(
        "--weights",
        default=None,
        help="alexnet-svm, resnet101: ImageNet state dict (default: torchvision's "
        "cached file if present, else random init; 'none': random init)",
    )
    add_threads_argument(p)
    p.set_defaults(func=cmd_train)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(a):
    from .config import get_config

    overrides = {
        "model.variant": a.variant,
        "train.seed": a.seed,
        "train.batch_size": a.batch_size,
        "train.device": a.device,
        "model.rnn_cell": a.rnn_cell,
        "train.finetune_lr": a.finetune_lr,
    }
    if a.epochs is not None:
        overrides.update({"train.stage_epochs": a.epochs, "train.fusion_epochs": a.epochs})
    if a.deterministic:
        overrides["train.deterministic"] = True
    for item in a.set:
        if "=" not in item:
            from .errors import ConfigError

            raise ConfigError(f"--set {item!r}: use SECTION.NAME=VALUE, e.g. --set train.lr=0.01")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _parse_value(v.strip())
    return get_config(a.profile, **overrides)


def cmd_train(a) -> int:
    from .train import fit
    from .utils import finite_or_none

    if a.data is not None and not a.data.exists():
        from .errors import DataError

        raise DataError(f"--data {a.data} does not exist")
    from .errors import ConfigError
    from .methods import BASELINES

    weights = a.weights
    if a.variant in BASELINES:  # Table 1's baselines (Sec. 4.2) write the same kind of run folder
        from .baselines import run_baseline

        if a.init_from is not None:
            raise ConfigError(f"--init-from starts a unified CNN-RNN from another run; {a.variant} has no use for it")
        name, a.variant = a.variant, None
        metrics = run_baseline(
            name, build_config(a), a.data, a.out, split_csv=a.split, weights=weights, resume=a.resume
        )
    elif weights is not None:
        raise ConfigError(f"--weights applies to the baselines alexnet-svm and resnet101, not {a.variant or 'bigru'}")
    else:
        cfg = build_config(a)
        metrics = fit(cfg, a.data, a.out, resume=a.resume, split_csv=a.split, init_from=a.init_from, progress=True)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank returns the metrics; one line is enough
        keys = ("variant", "profile", "test_accuracy", "val_accuracy", "mean_tpr")
        print(json.dumps(finite_or_none({k: metrics.get(k) for k in keys})))
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="five-crop evaluation of a finished run (its test split, or --data)")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", type=Path, default=None, help="evaluate on all images of this dataset instead")
    p.add_argument("--device", default="auto")
    add_threads_argument(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(a) -> int:
    from .evaluate import evaluate_run

    from .utils import finite_or_none

    print(json.dumps(finite_or_none(evaluate_run(a.run, a.data, a.device))))
    return 0


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="one JSON line per image: the emotion and the probabilities")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--device", default="auto")
    add_threads_argument(p)
    p.set_defaults(func=cmd_predict)


def cmd_predict(a) -> int:
    from .evaluate import predict_images

    for line in predict_images(a.run, a.images, a.device):
        print(json.dumps(line))
    return 0


def _add_small(sub) -> None:
    from .methods import DEFAULT_SMALL_METHODS, SMALL_LAYOUTS, SMALL_METHODS

    p = sub.add_parser(
        "small",
        help="Sec. 4.4: per-class true-positive rate on a small dataset (ArtPhoto, IAPS), "
        "5-fold CV, one against all (each class's binary rate, chance 0.5; and the "
        "n-way recall, chance 1/n), a chart like Fig. 7",
    )
    p.add_argument("--run", required=True, type=Path, help="a finished run trained on the large dataset")
    p.add_argument("--data", required=True, type=Path, help="the small dataset (see --layout)")
    p.add_argument("--out", required=True, type=Path, help="folder for tpr.csv, metrics.json and the chart")
    p.add_argument("--folds", type=int, default=5, help="K of the stratified K-fold cross-validation (default 5)")
    p.add_argument(
        "--layout",
        choices=SMALL_LAYOUTS,
        default="artphoto",
        help="artphoto: <emotion>_<n>.jpg; iaps: DIR/images + DIR/mikels_*.csv; fi: a folder per class",
    )
    p.add_argument("--min-count", type=int, default=10, help="leave out classes with fewer images (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the classifiers")
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_SMALL_METHODS),
        help=f"comma-separated, from {','.join(SMALL_METHODS)} (default {','.join(DEFAULT_SMALL_METHODS)})",
    )
    p.add_argument("--alexnet-weights", default=None, help="ImageNet AlexNet state dict ('none': random init)")
    p.add_argument("--resnet-weights", default=None, help="ImageNet ResNet-101 state dict ('none': random init)")
    add_threads_argument(p)
    p.set_defaults(func=cmd_small)


def cmd_small(a) -> int:
    from .small import METRICS, run_small

    m = run_small(
        a.run,
        a.data,
        a.out,
        folds=a.folds,
        layout=a.layout,
        min_count=a.min_count,
        seed=a.seed,
        device=a.device,
        methods=[s.strip() for s in a.methods.split(",") if s.strip()],
        alexnet_weights=a.alexnet_weights,
        resnet_weights=a.resnet_weights,
    )
    print(
        json.dumps(
            {
                "out": str(a.out),
                "classes": m["classes"],
                "excluded_classes": m["excluded_classes"],
                **{f"mean_{k}": {r["label"]: round(r[f"mean_{k}"], 4) for r in m["methods"].values()} for k in METRICS},
            }
        )
    )
    return 0


def _add_table1(sub) -> None:
    p = sub.add_parser(
        "table1",
        help="Table 1 as a controlled experiment: every row by one protocol, several seeds, "
        "intervals and a verdict per claim of Sec. 4.3",
    )
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: the built-in data)")
    p.add_argument("--out", required=True, type=Path, help="run folder: train/ and table1/ are written in it")
    p.add_argument("--profile", default="smoke", help="smoke (CPU, built-in data) or paper (Sec. 4.1, GPU)")
    p.add_argument("--seeds", type=int, default=3, help="independent seeds per row (default 3)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--variants", nargs="+", default=None, help="rows to train (default: all ten)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.NAME=VALUE",
        help="any configuration field, e.g. --set train.fusion_epochs=5 (repeatable)",
    )
    add_threads_argument(p)
    p.set_defaults(func=cmd_table1)


def cmd_table1(a) -> int:
    from .errors import ConfigError
    from .experiment import PROTOCOL_VARIANTS, run_table1
    from .notebook import ensure_data, pipeline_config

    if a.seeds < 1:
        raise ConfigError(f"--seeds {a.seeds}: give at least 1 (3 for an interval that can decide)")
    overrides = {}
    for item in a.set:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: use SECTION.NAME=VALUE, e.g. --set train.lr=0.01")
        k, v = item.split("=", 1)
        overrides[k.strip()] = _parse_value(v.strip())
    cfg = pipeline_config(a.profile, a.device, a.seed, **overrides)
    data = ensure_data(a.data)
    _, table, claims = run_table1(
        data, a.out, cfg, seeds=a.seeds, seed=a.seed, variants=a.variants or PROTOCOL_VARIANTS
    )
    for r in table.itertuples():
        print(f"{r.variant:9s} {r.mean:6.2f} % (95 % CI {r.ci_low:6.2f} .. {r.ci_high:6.2f}, {r.n_seeds} seeds)")
    for r in claims.itertuples():
        print(f"{r.comparison:20s} {r.mean_diff:+6.2f} points [{r.ci_low:+.2f}, {r.ci_high:+.2f}]: {r.verdict}")
    print(f"tables in {a.out / 'table1'}")
    return 0


def _add_variants(sub) -> None:
    p = sub.add_parser("variants", help="the variant names of Table 1 and what each means")
    p.set_defaults(func=cmd_variants)


def cmd_variants(a) -> int:
    from .model import VARIANTS
    from .paper import TABLE1_VARIANTS

    for name, (fusion, n, text) in VARIANTS.items():
        ref = TABLE1_VARIANTS.get(name)
        paper = f"  [paper, FI: {ref:.2f}%]" if ref is not None else ""
        print(f"{name:10s} {text}{paper}")
    from .methods import BASELINES, TABLE1_BASELINE_ROW
    from .paper import TABLE1

    for name, text in BASELINES.items():
        print(
            f"{name:10s} baseline: {text}  [paper, FI: {TABLE1[TABLE1_BASELINE_ROW[name]]:.2f}% ({TABLE1_BASELINE_ROW[name]})]"
        )
    print("\nAny fusion may name its branch count: e.g. gru6, lstm4, max6.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="emotionlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_data, _add_train, _add_table1, _add_evaluate, _add_predict, _add_small, _add_variants):
        add(sub)
    from .pipeline import add_parser as add_pipeline

    add_pipeline(sub)  # reproduce, notebooks
    _add_bench(sub, argv if argv is not None else sys.argv[1:])
    a = parser.parse_args(argv)
    try:
        # the OpenMP wait policy before anything imports torch, then the thread count: checked and applied before
        # anything is written or trained (emotionlib.threads)
        from .threads import parse_threads, prepare_environment, set_threads

        setting = getattr(a, "threads", None)
        setting = None if setting is None else parse_threads(setting)
        prepare_environment(setting=setting)
        if hasattr(a, "threads"):
            set_threads(setting)
        return a.func(a)
    except EmotionLibError as e:
        print(f"emotionlib {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # advice that holds for this command: only train has --resume; reproduce skips its complete notebooks
        advice = {
            "train": "; rerun with --resume to continue",
            "reproduce": "; rerun the same command to continue (complete notebooks are skipped)",
            "table1": "; rerun the same command to continue (finished runs are reused)",
        }.get(a.command, "")
        print(f"emotionlib {a.command}: interrupted{advice}", file=sys.stderr)
        return 130


def _add_bench(sub, argv: list[str]) -> None:
    """`bench` and its options come from emotionlib.bench, which is imported only when the command is bench: the
    other commands never pay for it. Elsewhere the command is listed by name."""
    if argv[:1] == ["bench"]:
        from .bench import add_parser

        add_parser(sub)
    else:
        sub.add_parser("bench", help="benchmarks against the alternatives (emotionlib bench --help for its options)")


if __name__ == "__main__":
    raise SystemExit(main())
