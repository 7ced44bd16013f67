"""Table 1 as a controlled experiment: every row trained by one protocol, several seeds, intervals and verdicts.

The protocol is the paper's (Sec. 4.1) for every row: the CNN stage by stage (Sec. 3.2), then the fusion stage, in
which the CNN is fine-tuned at `train.finetune_lr` (a tenth of the stages' rate, the stages' optimiser) for
`train.fusion_epochs`, the same for every row. What each row trains:

- the 5-branch rows (`ensemble`, `lstm`, `bilstm`, `gru`, `bigru`, `max`, `avg`) train identical CNN stages, so
  they share them exactly: the seed's `bigru` run trains them, the others copy its `stage-main.pt` and train only
  their fusion stage (train.init_from_run);
- `bigru4` shares the stages of branches 1-3 (identical: the same modules, seeds and data order) and trains its own
  main stage (trunk stage 4 and a main branch whose FC_5 reads four branches);
- `bigru6` and `softmax` share nothing (their first stage differs) and train all their own stages; `softmax`'s one
  CNN stage lasts as many epochs as the five greedy stages (`train.softmax_stages`);
- `ensemble` and `softmax` have no fusion head: their fusion stage fine-tunes the CNN under Eq. 5 of the
  classifiers they predict with (train.fusion_stage). Known confound, stated not removed: the recurrent heads pay
  Eq. 11's lambda * ||theta|| (lambda = 0.5), `max`, `avg` and the ensemble have no recurrent weights to pay for.

Each seed K trains its own CNN stages and data order on one split (the split of `seed`'s run). A pipeline run
folder RUN holds
    RUN/train/                      seed `seed`: the shared CNN stages and the Bi-GRU row (notebooks 02-03)
    RUN/table1/seed-K/bigru/        seed K != seed: the same
    RUN/table1/seed-K/VARIANT/      every other row of seed K
and the tables runs.csv (one row per variant and seed), table1.csv (mean, standard deviation and a t-interval
over seeds per variant) and claims.csv (a paired difference per seed for each comparison of Sec. 4.3, its
interval and a verdict).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import Config
from .errors import ConfigError
from .model import UnifiedCNNRNN, parse_variant
from .paper import TABLE1_ROW, TABLE1_VARIANTS

#: Table 1's rows with branches and the softmax row, plus the max / avg aggregation Sec. 1 contrasts with.
PROTOCOL_VARIANTS = ("softmax", "ensemble", "lstm", "bilstm", "gru", "bigru", "bigru4", "bigru6", "max", "avg")
#: The variant whose run trains the CNN stages the 5-branch rows share.
REFERENCE = "bigru"
CONFIDENCE = 0.95
#: "comparable" claims (Sec. 4.3 on 6 branches) hold when the whole interval lies within +- this many points.
EQUIVALENCE_MARGIN = 2.0

#: Sec. 4.3's reading of Table 1 as (a, b, what it says, kind): "better" claims a > b, "comparable" a = b.
CLAIMS = (
    ("ensemble", "softmax", "branches help: 5 branches + ensemble beat no branch", "better"),
    ("bigru", "ensemble", "learned fusion beats averaging the branch classifiers", "better"),
    ("bigru", "gru", "bidirectional beats unidirectional (GRU)", "better"),
    ("bilstm", "lstm", "bidirectional beats unidirectional (LSTM)", "better"),
    ("gru", "lstm", "GRU beats LSTM (unidirectional)", "better"),
    ("bigru", "bilstm", "Bi-GRU beats Bi-LSTM", "better"),
    ("bigru", "bigru4", "5 branches beat 4 (the 4-branch model lacks high-level features)", "better"),
    ("bigru", "bigru6", "5 branches match 6 ('comparable performance ... with more parameters')", "comparable"),
    ("bigru", "max", "the Bi-GRU beats max aggregation (not in Table 1)", "better"),
    ("bigru", "avg", "the Bi-GRU beats mean aggregation (not in Table 1)", "better"),
)
VERDICTS = ("holds", "contradicted", "undecided")


# ----------------------------------------------------------------------------- statistics


def t_quantile(confidence: float, dof: int) -> float:
    """The two-sided Student-t quantile: mean +- t * sd / sqrt(n) covers the mean with `confidence`."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, float]:
    """(mean, sample standard deviation, low, high): a t-interval over independent runs (seeds). With one value the
    standard deviation and the bounds are NaN: one run says nothing about its spread."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return (math.nan,) * 4
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(v.std(ddof=1))
    half = t_quantile(confidence, len(v) - 1) * sd / math.sqrt(len(v))
    return mean, sd, mean - half, mean + half


def verdict(low: float, high: float, kind: str = "better", margin: float = EQUIVALENCE_MARGIN) -> str:
    """A claim's verdict from the interval of the paired difference a - b.

    better: holds when the interval lies above 0, contradicted when below, else (0 inside, or no interval) undecided.
    comparable: holds when the interval lies within +-margin, contradicted when it lies wholly outside, else undecided.
    """
    if kind not in ("better", "comparable"):
        raise ConfigError(f"claim kind {kind!r}: use 'better' or 'comparable'")
    if math.isnan(low) or math.isnan(high):
        return "undecided"
    if kind == "better":
        return "holds" if low > 0 else "contradicted" if high < 0 else "undecided"
    if -margin <= low and high <= margin:
        return "holds"
    return "contradicted" if low > margin or high < -margin else "undecided"


# ----------------------------------------------------------------------------- which stages a row shares


def _stage_signature(model: UnifiedCNNRNN) -> list[tuple[str, tuple[int, ...], tuple[str, ...]]]:
    return [(s.name, tuple(s.trunk_stages), tuple(s.heads)) for s in model.cnn_stages()]


def shared_stages(reference: Config, variant: Config) -> list[str]:
    """The CNN stages a variant trains exactly as the reference does: the longest common prefix of the two stage
    plans (same name, trunk stages and heads) whose modules also agree in shape. Every later stage, and every module
    that differs, the variant trains itself."""
    ref, var = UnifiedCNNRNN(reference.model), UnifiedCNNRNN(variant.model)
    out = []
    for a, b in zip(_stage_signature(ref), _stage_signature(var)):
        if a != b:
            break
        shapes = [{k: v.shape for k, v in m.state_dict().items() if k.startswith(_prefixes(a))} for m in (ref, var)]
        if shapes[0] != shapes[1]:
            break
        out.append(a[0])
    return out


def _prefixes(sig) -> tuple[str, ...]:
    name, trunk, heads = sig
    return tuple(f"trunk.stages.{s}." for s in trunk) + tuple(
        "main." if h == "main" else f"branches.{h}." for h in heads
    )


# ----------------------------------------------------------------------------- the run folders


def row_folder(run_dir: str | os.PathLike, k: int, variant: str, seed: int = 0) -> Path:
    """Where the row (variant, seed k) of a pipeline run is trained: RUN/train for seed `seed`'s reference run,
    RUN/table1/seed-K/VARIANT otherwise."""
    run_dir = Path(run_dir)
    return run_dir / "train" if (k == seed and variant == REFERENCE) else run_dir / "table1" / f"seed-{k}" / variant


def seed_cnns(run_dir: str | os.PathLike, seed: int = 0, seeds: int = 1) -> dict[int, Path]:
    """seed -> the stage-main.pt of that seed's shared CNN (the multi-stage CNN of Sec. 3.2, before fusion), for
    the seeds seed .. seed + seeds - 1 whose checkpoint exists."""
    out = {}
    for k in range(seed, seed + seeds):
        path = row_folder(run_dir, k, REFERENCE, seed) / "checkpoints" / "stage-main.pt"
        if path.exists():
            out[k] = path
    return out


# ----------------------------------------------------------------------------- the protocol


def run_protocol(
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    cfg: Config,
    *,
    seeds: int = 3,
    seed: int = 0,
    variants: Sequence[str] = PROTOCOL_VARIANTS,
    progress: bool = False,
    log=print,
):
    """Train every (variant, seed) row of Table 1 by the one protocol (module docstring) and return runs.csv's
    frame: one row per variant and seed. Finished rows are read back, unfinished ones resume; a row whose folder
    was made with another configuration is refused (train.fit). `cfg`: the pipeline's configuration (its
    train.seed and model.variant are set per row)."""
    import pandas as pd

    from .train import fit

    if seeds < 1:
        raise ConfigError(f"seeds={seeds}: need at least one seed")
    for v in variants:
        parse_variant(v)
    ref_cfg = _row_config(cfg, REFERENCE, seed)
    plan = {v: shared_stages(ref_cfg, _row_config(cfg, v, seed)) for v in variants}
    split = row_folder(run_dir, seed, REFERENCE, seed) / "split.csv"
    rows = []
    for k in range(seed, seed + seeds):
        ref = row_folder(run_dir, k, REFERENCE, seed)
        need_ref = REFERENCE in variants or any(plan[v] for v in variants)
        if need_ref:  # the shared CNN stages first; seed `seed`'s run makes the split every other row reuses
            fit(
                _row_config(cfg, REFERENCE, k),
                data_dir,
                ref,
                resume=True,
                until="main",
                progress=progress,
                split_csv=split if split.exists() else None,
            )
        for v in variants:
            out = row_folder(run_dir, k, v, seed)
            start = time.perf_counter()
            m = fit(
                _row_config(cfg, v, k),
                data_dir,
                out,
                resume=True,
                progress=progress,
                split_csv=split if split.exists() else None,
                init_from=ref / "checkpoints" / "stage-main.pt" if plan[v] and v != REFERENCE else None,
                init_stages=plan[v] if v != REFERENCE else None,
            )
            rows.append(_row(v, k, m, out, run_dir, plan[v] if v != REFERENCE else [], ref))
            log(f"seed {k} {v:>8}: test {100 * m['test_accuracy']:5.1f} %  ({time.perf_counter() - start:.0f} s)")
    df = pd.DataFrame(rows)
    from .figures import save_table

    save_table(df, Path(run_dir) / "table1" / "runs.csv", index=False)
    return df


def _row_config(cfg: Config, variant: str, k: int) -> Config:
    return replace(cfg, model=replace(cfg.model, variant=variant), train=replace(cfg.train, seed=k))


def _row(variant: str, k: int, m: dict[str, Any], folder: Path, run_dir, shared: list[str], ref: Path) -> dict:
    """One runs.csv row: the result and the budget it was trained with, read from the run folder itself."""
    from .checkpoint import read_summary
    from .utils import read_json, relative_path

    cfg = Config.from_dict(read_json(folder / "config.json")["config"])
    summary = read_summary(folder / "summary.csv")
    own = [r for r in summary if r["stage"] != "fusion"]
    shared_epochs = len(shared) * cfg.train.stage_epochs  # trained in the reference run, copied here
    ref_seconds = (
        sum(float(r["seconds"]) for r in read_summary(ref / "summary.csv") if r["stage"] in shared) if shared else 0.0
    )
    return {
        "variant": variant,
        "seed": k,
        "test_acc": round(100 * m["test_accuracy"], 3),
        "mean_tpr": round(100 * m["mean_tpr"], 3),
        "val_acc": _percent(m["val_accuracy"]),
        "cnn_epochs": shared_epochs + len(own),
        "fusion_epochs": sum(r["stage"] == "fusion" for r in summary),
        "finetune_lr": cfg.train.finetune_lr,
        "stage_lr": cfg.train.lr,
        "optimizer": cfg.train.optimizer,
        "shared_stages": ", ".join(shared) if shared else "none",
        "own_stages": ", ".join(dict.fromkeys(r["stage"] for r in summary)),
        "seconds": round(ref_seconds + sum(float(r["seconds"]) for r in summary), 1),
        "folder": relative_path(folder, run_dir),
    }


def _percent(value: float | None) -> float:
    """A rate from metrics.json in %; NaN where it is null (strict JSON: an empty validation split)."""
    return float("nan") if value is None else round(100 * value, 3)


def protocol_of(variant: str, cfg: Config | None = None) -> str:
    """In words, how the protocol trains a row (the table's `protocol` column), from the stage plans themselves."""
    from .config import get_config

    cfg = cfg if cfg is not None else get_config("tiny")
    var, ref = _row_config(cfg, variant, 0), _row_config(cfg, REFERENCE, 0)
    own = [s.name for s in UnifiedCNNRNN(var.model).cnn_stages()]
    shared = shared_stages(ref, var)
    if variant == REFERENCE:
        stages = f"trains the {len(own)} shared CNN stages"
    elif shared:
        rest = [s for s in own if s not in shared]
        stages = f"copies {len(shared)} shared CNN stages" + (f", trains {', '.join(rest)}" if rest else "")
    else:
        n = cfg.train.softmax_stages if var.model.n_branches == 0 else 1
        stages = f"trains its own {len(own)} CNN stage{'s' if len(own) > 1 else ''}" + (
            f" ({n} stages' epochs)" if n > 1 else f" ({', '.join(own)})"
        )
    fusion = var.model.fusion
    tail = {
        "softmax": "fine-tunes the CNN under Eq. 5 of the main classifier",
        "ensemble": "fine-tunes the CNN under Eq. 5 of all five classifiers",
    }.get(fusion, f"{fusion} head (RMSprop, Eq. 11) with the CNN fine-tuned")
    return f"{stages}; fusion stage: {tail}"


def summarise(runs, confidence: float = CONFIDENCE, cfg: Config | None = None):
    """table1.csv: one row per variant - mean, standard deviation and t-interval over seeds of the test accuracy
    (%), the mean TPR, the budget every seed used, and the paper's FI number in its own column."""
    import pandas as pd

    out = []
    for v, g in runs.groupby("variant", sort=False):
        mean, sd, low, high = mean_interval(g["test_acc"], confidence)
        out.append(
            {
                "variant": v,
                "table1_row": row_label(v),
                "protocol": protocol_of(v, cfg),
                "n_seeds": len(g),
                "mean": round(mean, 2),
                "std": round(sd, 2),
                "ci_low": round(low, 2),
                "ci_high": round(high, 2),
                "mean_tpr": round(float(g["mean_tpr"].mean()), 2),
                "cnn_epochs": _one(g["cnn_epochs"]),
                "fusion_epochs": _one(g["fusion_epochs"]),
                "finetune_lr": _one(g["finetune_lr"]),
                "paper_FI_acc": TABLE1_VARIANTS.get(v, math.nan),
            }
        )
    return pd.DataFrame(out)


def _one(col):
    vals = sorted(set(col))
    return vals[0] if len(vals) == 1 else "/".join(map(str, vals))


def compare(
    runs,
    claims=CLAIMS,
    confidence: float = CONFIDENCE,
    margin: float = EQUIVALENCE_MARGIN,
    run_dir: str | os.PathLike | None = None,
):
    """claims.csv: for each comparison of Sec. 4.3 whose two rows were trained, the per-seed paired difference of
    test accuracy a - b (points), its mean, 95 % interval and verdict, beside the paper's FI difference.

    The interval is a t-interval over seeds (t with seeds - 1 degrees of freedom). Given `run_dir` (the rows'
    predictions.csv), its standard error also holds the sampling error of the one test split every seed shares,
    which the seeds' spread cannot show: se^2 = sd^2 / n + mean over seeds of the paired (McNemar) variance of the
    difference on that split, ((b + c) / N - ((b - c) / N)^2) / N for b, c images right in one row only. So three
    seeds that differ by exactly the same two images do not make a zero-width interval."""
    import pandas as pd

    acc = runs.pivot_table(index="seed", columns="variant", values="test_acc")
    folders = runs.set_index(["variant", "seed"])["folder"] if run_dir is not None and "folder" in runs else None
    out = []
    for a, b, what, kind in claims:
        if a not in acc or b not in acc:
            continue
        d = (acc[a] - acc[b]).dropna()
        mean, sd, low, high = mean_interval(d, confidence)
        test_var = math.nan
        if folders is not None and len(d):
            test_var = float(
                np.mean(
                    [
                        _paired_variance(Path(run_dir) / folders[(a, k)], Path(run_dir) / folders[(b, k)])
                        for k in d.index
                    ]
                )
            )
            if len(d) > 1:
                half = t_quantile(confidence, len(d) - 1) * math.sqrt(sd**2 / len(d) + test_var)
                low, high = mean - half, mean + half
        pa, pb = TABLE1_VARIANTS.get(a), TABLE1_VARIANTS.get(b)
        out.append(
            {
                "comparison": f"{a} vs {b}",
                "claim": what,
                "kind": kind,
                "n_seeds": len(d),
                "per_seed": " ".join(f"{x:+.1f}" for x in d),
                "mean_diff": round(mean, 2),
                "std": round(sd, 2),
                "test_se": round(math.sqrt(test_var), 2) if not math.isnan(test_var) else math.nan,
                "ci_low": round(low, 2),
                "ci_high": round(high, 2),
                "verdict": verdict(low, high, kind, margin),
                "paper_FI_diff": round(pa - pb, 2) if pa is not None and pb is not None else math.nan,
            }
        )
    return pd.DataFrame(out)


def _paired_variance(run_a: Path, run_b: Path) -> float:
    """The sampling variance (points^2) of the accuracy difference of two runs scored on the same test images."""
    import pandas as pd

    ca = pd.read_csv(run_a / "predictions.csv").set_index("path")["correct"]
    cb = pd.read_csv(run_b / "predictions.csv").set_index("path")["correct"].reindex(ca.index)
    if cb.isna().any():
        raise ConfigError(f"{run_a} and {run_b} were not scored on the same test images")
    n = len(ca)
    only_a, only_b = float(((ca == 1) & (cb == 0)).sum()), float(((ca == 0) & (cb == 1)).sum())
    return 100**2 * ((only_a + only_b) / n - ((only_a - only_b) / n) ** 2) / n


def run_table1(
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    cfg: Config,
    *,
    seeds: int = 3,
    seed: int = 0,
    variants: Sequence[str] = PROTOCOL_VARIANTS,
    progress: bool = False,
    log=print,
):
    """run_protocol, then Table 1 and the claims from it: (runs, table1, claims), written to RUN/table1/ as
    runs.csv, table1.csv and claims.csv."""
    from .figures import save_table

    runs = run_protocol(data_dir, run_dir, cfg, seeds=seeds, seed=seed, variants=variants, progress=progress, log=log)
    table, claims = summarise(runs, cfg=cfg), compare(runs, run_dir=run_dir)
    save_table(table, Path(run_dir) / "table1" / "table1.csv", index=False)
    save_table(claims, Path(run_dir) / "table1" / "claims.csv", index=False)
    return runs, table, claims


def row_label(variant: str) -> str:
    """Table 1's name for a variant; the max / avg aggregation has none."""
    if variant in TABLE1_ROW:
        return TABLE1_ROW[variant]
    fusion, n = parse_variant(variant)
    return f"CNN+{n} Branches+{fusion.capitalize()} (not in Table 1)"


def label_ceiling(run_dir: str | os.PathLike) -> float | None:
    """The best test accuracy any model can reach on a synthetic run's test split, in %: the share of test images
    whose folder label is their true class (synth's label noise flips the rest). None for data without factors."""
    import pandas as pd

    from .utils import read_json

    run_dir = Path(run_dir)
    root = Path(read_json(run_dir / "run.json")["data_root"])
    if not (root / "factors.csv").exists():
        return None
    f = pd.read_csv(root / "factors.csv").set_index("path")
    split = pd.read_csv(run_dir / "split.csv")
    test = split[split["split"] == "test"]["path"]
    f = f.reindex(test)
    return round(100 * float((f["label"] == f["true_label"]).mean()), 2)


# ----------------------------------------------------------------------------- the report's verdicts

#: The report's vocabulary (notebook 08): a claims.csv "holds" is reported as "supported".
REPORT_VERDICTS = ("supported", "contradicted", "undecided", "not testable on this data")
#: The paper's claim behind each item the report decides, in the paper's words where it has them.
PAPER_CLAIMS = {
    "Table 1": "CNN+5 Branches+Bi-GRU is the best of the paper's variants (73.03 % on FI), and every comparison "
    "of Sec. 4.3 goes its way (branches help, learned fusion beats the ensemble, bidirectional beats "
    "unidirectional, GRU beats LSTM, 5 branches beat 4 and match 6)",
    "Fig. 3": "'as the layers go deeper, the receptive fields with top activation are becoming more semantically "
    "meaningful' (Sec. 3.1): deep branches carry higher-level cues than shallow ones",
    "Fig. 6": "'a more balanced performance, especially for some negative emotions, such as anger and fear' "
    "(Sec. 4.3): the Bi-GRU raises the rare, hard classes of FI above a multi-level model without RNN",
    "Fig. 7": "on ArtPhoto 'our model is better on average than other methods' (Sec. 4.4): the pre-trained model's "
    "mean true-positive rate beats the baselines",
}
#: Fig. 6's point needs an imbalanced training set: below this ratio of the largest to the smallest class it is
#: reported as not testable (FI's is about 5: anger and fear are about 5 % of it each).
IMBALANCE_RATIO = 1.5


def report_verdict(claims_verdict: str) -> str:
    """A claims.csv verdict in the report's vocabulary: holds -> supported; contradicted and undecided unchanged."""
    if claims_verdict not in VERDICTS:
        raise ConfigError(f"verdict {claims_verdict!r}: use one of {VERDICTS}")
    return "supported" if claims_verdict == "holds" else claims_verdict


def _interval_text(mean: float, low: float, high: float, unit: str) -> str:
    if math.isnan(low):
        return f"{mean:+.2f} {unit} (one value: no interval)"
    return f"{mean:+.2f} {unit}, 95 % interval [{low:+.2f}, {high:+.2f}]"


def table1_verdict(claims) -> dict:
    """Table 1's headline from claims.csv: supported when every comparison of the Bi-GRU row (bigru vs another
    row) holds, contradicted when any is contradicted, else undecided; the evidence counts all verdicts."""
    if claims is None or len(claims) == 0:
        return {"evidence": "no claims.csv: notebook 04 did not run", "verdict": "not testable on this data"}
    own = claims[claims["comparison"].str.startswith(f"{REFERENCE} vs ")]
    counts = claims["verdict"].value_counts()
    evidence = f"{len(claims)} paired comparisons over {int(claims['n_seeds'].max())} seeds: " + ", ".join(
        f"{counts.get(v, 0)} {report_verdict(v)}" for v in VERDICTS
    )
    contra = list(claims.loc[claims["verdict"] == "contradicted", "comparison"])
    if contra:
        evidence += f" (contradicted: {', '.join(contra)})"
    if len(own) and (own["verdict"] == "holds").all():
        v = "supported"
    elif (own["verdict"] == "contradicted").any():
        v = "contradicted"
    else:
        v = "undecided"
    return {"evidence": evidence, "verdict": v}


def fig3_verdict(probe, cue: str = "shape") -> dict:
    """Fig. 3's claim as a measurement: per seed, the training gain (trained probe minus its own random-init
    control) on the high-level cue at the deepest pooling branch minus the same at pool1's; its t-interval over
    seeds gives the verdict. Data that records no cues per image (FI) cannot test it."""
    if probe is None or len(probe) == 0:
        return {
            "evidence": "no cues recorded per image (no probe_accuracy.csv): only Fig. 3's pictures",
            "verdict": "not testable on this data",
        }
    g = probe[probe["cue"] == cue].pivot_table(index=["level", "seed"], columns="source", values="accuracy")
    g = (g["trained"] - g["random init"]).unstack("level")
    levels = [lv for lv in g.columns if "pool" in lv]
    if len(levels) < 2:
        return {"evidence": f"fewer than two pooling levels probed for {cue}", "verdict": "not testable on this data"}
    levels.sort(key=lambda lv: int(lv.split("pool")[1].rstrip(")")))
    deep, shallow = levels[-1], levels[0]
    d = 100 * (g[deep] - g[shallow]).dropna()
    mean, _, low, high = mean_interval(d)
    v = report_verdict(verdict(low, high, "better"))
    return {
        "evidence": f"{cue} cue, training gain of {deep.split()[0]} minus {shallow.split()[0]}: "
        + _interval_text(mean, low, high, "points")
        + f" ({len(d)} seeds)",
        "verdict": v,
    }


def fig6_verdict(run_dir: str | os.PathLike, seed: int = 0, seeds: int = 1, rival: str = "ensemble") -> dict:
    """Fig. 6's claim: the Bi-GRU's worst-class true-positive rate beats a multi-level model without an RNN (the
    `rival` row, here the 5-branch ensemble; MldrNet itself has no code here), paired over the seeds trained by
    the protocol. On a balanced training split (largest / smallest class < IMBALANCE_RATIO) there are no rare
    classes for the claim to be about: not testable, the difference is shown for information only."""
    import pandas as pd

    from .utils import read_json

    run_dir = Path(run_dir)
    split = pd.read_csv(row_folder(run_dir, seed, REFERENCE, seed) / "split.csv")
    counts = split[split["split"] == "train"]["label"].value_counts()
    ratio = float(counts.max() / counts.min())
    diffs = []
    for k in range(seed, seed + seeds):
        a, b = (
            row_folder(run_dir, k, REFERENCE, seed) / "metrics.json",
            row_folder(run_dir, k, rival, seed) / "metrics.json",
        )
        if a.exists() and b.exists():
            diffs.append(
                100 * (min(read_json(a)["per_class_tpr"].values()) - min(read_json(b)["per_class_tpr"].values()))
            )
    mean, _, low, high = mean_interval(diffs)
    balance = f"training classes {counts.min()}-{counts.max()} images (ratio {ratio:.1f})"
    shown = (
        (
            f"worst-class TPR, {REFERENCE} minus {rival}: "
            + _interval_text(mean, low, high, "points")
            + f" ({len(diffs)} seeds)"
        )
        if diffs
        else f"no {rival} row trained"
    )
    if ratio < IMBALANCE_RATIO:
        return {
            "evidence": f"balanced data, {balance}: no rare classes; for information, {shown}",
            "verdict": "not testable on this data",
        }
    if not diffs:
        return {"evidence": f"{balance}; {shown}", "verdict": "not testable on this data"}
    return {"evidence": f"{balance}; {shown}", "verdict": report_verdict(verdict(low, high, "better"))}


def fig7_verdict(small_metrics: dict | None, metric: str = "ova_tpr") -> dict:
    """Fig. 7's claim: per test fold, the pre-trained model's mean rate (over the classes) minus the best other
    method's on that fold; the t-interval over the folds gives the verdict."""
    if not small_metrics:
        return {"evidence": "no small/metrics.json: notebook 07 did not run", "verdict": "not testable on this data"}
    methods = small_metrics["methods"]
    others = [m for m in methods if m != "ours"]
    if "ours" not in methods or not others:
        return {"evidence": "the small-dataset run has no baseline beside ours", "verdict": "not testable on this data"}
    ours = np.asarray(methods["ours"][f"fold_mean_{metric}"])
    best = np.max([methods[m][f"fold_mean_{metric}"] for m in others], axis=0)
    mean, _, low, high = mean_interval(100 * (ours - best))
    names = ", ".join(methods[m]["label"] for m in others)
    return {
        "evidence": f"mean one-against-all TPR, ours minus the best of ({names}) per fold: "
        + _interval_text(mean, low, high, "points")
        + f" ({len(ours)} folds)",
        "verdict": report_verdict(verdict(low, high, "better")),
    }


def report_verdicts(run_dir: str | os.PathLike, seed: int = 0, seeds: int = 1):
    """The report's page (notebook 08): one row per item (Table 1, Fig. 3, Fig. 6, Fig. 7) with the paper's
    claim, this run's evidence and a verdict in REPORT_VERDICTS, read from the files the notebooks wrote."""
    import pandas as pd

    from .utils import read_json

    run_dir = Path(run_dir)
    claims = run_dir / "table1" / "claims.csv"
    probe = run_dir / "tables" / "probe_accuracy.csv"
    small = run_dir / "small" / "metrics.json"
    rows = {
        "Table 1": table1_verdict(pd.read_csv(claims) if claims.exists() else None),
        "Fig. 3": fig3_verdict(pd.read_csv(probe) if probe.exists() else None),
        "Fig. 6": fig6_verdict(run_dir, seed, seeds),
        "Fig. 7": fig7_verdict(read_json(small) if small.exists() else None),
    }
    return pd.DataFrame(
        [
            {"item": k, "paper's claim": PAPER_CLAIMS[k], "this run's evidence": r["evidence"], "verdict": r["verdict"]}
            for k, r in rows.items()
        ]
    )


__all__ = [
    "PROTOCOL_VARIANTS",
    "REFERENCE",
    "CLAIMS",
    "VERDICTS",
    "EQUIVALENCE_MARGIN",
    "mean_interval",
    "t_quantile",
    "verdict",
    "shared_stages",
    "row_folder",
    "seed_cnns",
    "run_protocol",
    "run_table1",
    "protocol_of",
    "summarise",
    "compare",
    "row_label",
    "label_ceiling",
    "REPORT_VERDICTS",
    "PAPER_CLAIMS",
    "report_verdict",
    "table1_verdict",
    "fig3_verdict",
    "fig6_verdict",
    "fig7_verdict",
    "report_verdicts",
]
