"""Figures and tables: one style, and files that are the same bytes every time they are made.

Every figure is saved as PNG and PDF beside the notebook that shows it inline; metadata that would change from
run to run (creation date, software version strings) is fixed, so reruns do not churn the files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd

from .evaluate import row_normalise
from .paper import CLASSES as PAPER_CLASSES
from .paper import FIG6_MLDRNET, FIG6_OURS
from .utils import atomic_path

if TYPE_CHECKING:
    from .config import Config
    from .data import DatasetIndex
    from .probes import ChannelTop

_FIXED_META = {
    "png": {"Software": "emotionlib"},
    "pdf": {"Creator": "emotionlib", "Producer": "emotionlib", "CreationDate": None},
}


def setup(seed: int = 0, style: str = "whitegrid") -> None:
    """The one call every notebook opens with: seeds, plotting defaults, deterministic SVG/PDF hashes."""
    import seaborn as sns

    from .utils import seed_everything

    seed_everything(seed)
    sns.set_theme(style=style, context="notebook")
    matplotlib.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 120,
            "savefig.bbox": "tight",
            "svg.hashsalt": "emotionlib",
            "pdf.compression": 6,
        }
    )


def save_figure(fig, path: str | os.PathLike, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Save `fig` as path.png and path.pdf (atomically, reproducible metadata); return the files written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, metadata=_FIXED_META.get(fmt))
        written.append(target)
    return written


def save_table(df, path: str | os.PathLike, **kw) -> Path:
    """A pandas DataFrame as CSV, atomically."""
    path = Path(path).with_suffix(".csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kw)
    return path


# ----------------------------------------------------------------------------- plots the notebooks share
# Each returns the figure, so a notebook shows it inline and passes it to save_figure.


def plot_counts(counts, title: str = "", ylabel: str = "images"):
    """Bars per class; a DataFrame with several columns (e.g. the splits) is stacked in column order."""
    import matplotlib.pyplot as plt
    import pandas as pd

    df = counts.to_frame() if isinstance(counts, pd.Series) else counts
    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = None
    for col in df.columns:
        ax.bar(df.index, df[col], bottom=bottom, label=str(col))
        bottom = df[col] if bottom is None else bottom + df[col]
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    if len(df.columns) > 1:
        ax.legend(frameon=False, ncols=len(df.columns), loc="upper center", bbox_to_anchor=(0.5, -0.3))
    return fig


def plot_image_grid(rows: dict, col_titles=None, cell: float = 1.2):
    """A grid of images: one row per key of `rows` (its label on the left), images as PIL images or paths."""
    import matplotlib.pyplot as plt
    from PIL import Image

    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n + 1, cell * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c < len(images):
                im = images[c]
                ax.imshow(Image.open(im).convert("RGB") if not isinstance(im, Image.Image) else im)
            else:
                ax.axis("off")
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(col_titles[c], fontsize=9)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def plot_examples(index, per_class: int = 4, cell: float = 1.0):
    """The first `per_class` images of every class of a DatasetIndex, one row per emotion."""
    rows = {c: [s.path for s in index.samples if s.label == c][:per_class] for c in index.classes}
    return plot_image_grid(rows, cell=cell)


def plot_cue_levels(size: int = 96, seeds: tuple[int, ...] = (0, 1, 2), base: dict | None = None, cell: float = 1.0):
    """The built-in data's three cues, one at a time: each row flips one cue of `base` (default: class 0's),
    rendered from the same random seeds, so within a column only that cue (and what it drags along) changes."""
    import numpy as np

    from . import synth

    base = dict(base or synth.CLASS_FACTORS[synth.CLASSES[0]])
    rows, titles = {}, []
    for cue, levels in synth.FACTORS.items():
        images = []
        for level in levels:
            for s in seeds:
                image, _, _ = synth.render({**base, cue: level}, size, np.random.default_rng([s, 99]))
                images.append(image)
        rows[f"{cue}\n({levels[0]} | {levels[1]})"] = images
    titles = [f"level {lv}\nseed {s}" for lv in (1, 2) for s in seeds]  # two lines: one fits a cell
    return plot_image_grid(rows, titles, cell)


def summary_frame(path):
    """summary.csv as a DataFrame with numbers, plus `step`: the epoch counted across all stages (the x axis)."""
    import pandas as pd

    df = pd.read_csv(path)
    df["step"] = range(1, len(df) + 1)
    return df


def plot_training_curves(summary, columns: dict[str, str], stages=None, title: str = ""):
    """One panel per `columns` entry (column -> panel title) against the epoch counted across stages; each stage
    in its own colour, with a dashed line where the next one begins."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    df = summary if stages is None else summary[summary["stage"].isin(stages)]
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3), squeeze=False)
    names = list(dict.fromkeys(df["stage"]))
    for ax, (col, label) in zip(axes[0], columns.items()):
        for name in names:
            part = df[df["stage"] == name]
            if col in part and part[col].notna().any():
                ax.plot(part["step"], part[col], marker="o", ms=3, label=name)
        for name in names[1:]:
            ax.axvline(df.loc[df["stage"] == name, "step"].min() - 0.5, color="0.6", lw=0.8, ls="--")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("epoch (all stages)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 21.5 ticks
    axes[0][-1].legend(frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy(
    ours: dict[str, float],
    reference: dict[str, float] | None = None,
    chance: float | None = None,
    ours_label: str = "this run",
    reference_label: str = "paper (FI)",
):
    """Accuracy bars, all in %: this run's in one panel and, given a `reference`, the paper's in a panel of its own
    beside it, each titled with its source, so a number quoted from the paper on FI is never read off this run's
    axis. `chance` (in %, this run's) draws a dotted line."""
    import matplotlib.pyplot as plt

    panels = [(ours, ours_label, "C0")] + ([(reference, reference_label, "0.45")] if reference else [])
    widths = [max(len(v), 1) + 0.6 for v, _, _ in panels]
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(max(4.0, 0.8 * sum(widths) + 1.5), 3.4),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )
    for ax, (values, label, colour) in zip(axes[0], panels):
        bars = ax.bar(range(len(values)), list(values.values()), 0.6, color=colour)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(values)), list(values))
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, len(values) - 0.4)
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(label, fontsize=9)
    if chance is not None:
        axes[0][0].axhline(chance, color="0.4", ls=":", lw=1, label="chance")
        axes[0][0].legend(frameon=False, fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_changes(changes, title: str = "largest |change| of any parameter or batch-norm statistic in the stage"):
    """Heat map of stage_changes(): rows are training stages, columns modules; an exact 0 (frozen) shows white."""
    import matplotlib.pyplot as plt
    import numpy as np

    v = changes.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(0.8 * v.shape[1] + 2, 0.5 * v.shape[0] + 1.2))
    shown = np.ma.masked_where(v == 0, np.log10(np.where(v > 0, v, 1)))
    im = ax.imshow(shown, cmap="viridis", aspect="auto")
    for (i, j), x in np.ndenumerate(v):
        ax.text(
            j,
            i,
            "0" if x == 0 else f"{x:.1g}",
            ha="center",
            va="center",
            fontsize=7,
            color="black" if x == 0 else "white",
        )
    ax.set_xticks(range(v.shape[1]), changes.columns)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(v.shape[0]), changes.index)
    ax.grid(False)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="log10 |change|")
    return fig


def plot_agreement(x, y, xlabel: str, ylabel: str, title: str = ""):
    """Scatter of two implementations' outputs for the same inputs: on the diagonal where they agree."""
    import matplotlib.pyplot as plt
    import numpy as np

    x, y = np.ravel(x), np.ravel(y)
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    lim = float(max(np.abs(x).max(), np.abs(y).max(), 1e-6)) * 1.05
    ax.plot([-lim, lim], [-lim, lim], color="0.6", lw=0.8)
    ax.scatter(x, y, s=6, alpha=0.6)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------- Table 1 as an experiment


VERDICT_COLOURS = {"holds": "#2a9d5c", "contradicted": "#c0392b", "undecided": "#8a8a8a"}


def plot_table1(table, runs, run_label: str, chance: float | None = None, ceiling: float | None = None):
    """Left: each row's test accuracy over seeds (bar: mean; whisker: 95 % t-interval; dots: the seeds) with the
    chance and label-noise ceiling lines. Right, on its own axis: the paper's FI number of the same row."""
    import matplotlib.pyplot as plt
    import numpy as np

    y = np.arange(len(table))[::-1]
    fig, (ax, axp) = plt.subplots(
        1, 2, sharey=True, figsize=(11, 0.45 * len(table) + 1.8), gridspec_kw={"width_ratios": [3, 1.6]}
    )
    lo = (table["mean"] - table["ci_low"]).fillna(0).clip(lower=0)
    hi = (table["ci_high"] - table["mean"]).fillna(0).clip(lower=0)
    ax.barh(y, table["mean"], color="C0", alpha=0.35, xerr=[lo, hi], error_kw={"ecolor": "C0", "capsize": 3})
    for yi, v in zip(y, table["variant"]):
        seeds = runs[runs["variant"] == v]["test_acc"]
        ax.plot(seeds, np.full(len(seeds), yi), "o", color="C0", ms=3.5)
    for yi, m, n in zip(y, table["mean"], table["n_seeds"]):
        ax.text(1, yi, f"{m:.1f}", va="center", fontsize=8)
    if chance is not None:
        ax.axvline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:.1f} %")
    if ceiling is not None:
        ax.axvline(ceiling, color="k", ls=":", lw=1, label=f"label-noise ceiling {ceiling:.1f} %")
    ax.set_yticks(y, [f"{v}  ({r.split(' (')[0]})" for v, r in zip(table["variant"], table["table1_row"])], fontsize=9)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"test accuracy (%): mean, 95 % interval and each of {int(table['n_seeds'].max())} seeds")
    ax.set_title(run_label, fontsize=10)
    if chance is not None or ceiling is not None:  # below the axis: inside it would cover the last rows' seeds
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2, fontsize=8, frameon=False)
    paper = table["paper_FI_acc"].astype(float)
    has = paper.notna().to_numpy()
    axp.scatter(paper[has], y[has], marker="D", color="k", zorder=3)
    for yi in y[~has]:
        axp.text(57, yi, "not in Table 1", va="center", fontsize=8, color="grey")
    axp.set_xlim(56, 76)
    axp.set_xlabel("accuracy on FI (%)")
    axp.set_title("FI (paper, Table 1)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_claims(claims, run_label: str):
    """Each comparison of Sec. 4.3: the paired difference a - b per seed (dots), its mean and 95 % interval, coloured
    by verdict; the zero line, and for 'comparable' claims the equivalence band. The paper's FI difference is in a
    panel of its own beside it (same rows, its own axis): a difference on FI is not one measured on this data."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    from .experiment import EQUIVALENCE_MARGIN

    y = np.arange(len(claims))[::-1]
    fig, (ax, ax_fi) = plt.subplots(
        1, 2, figsize=(11, 0.5 * len(claims) + 1.9), sharey=True, gridspec_kw={"width_ratios": [3, 1]}
    )
    ax.axvline(0, color="k", lw=0.8)
    ax_fi.axvline(0, color="k", lw=0.8)
    for yi, r in zip(y, claims.itertuples()):
        c = VERDICT_COLOURS[r.verdict]
        if r.kind == "comparable":
            ax.fill_betweenx([yi - 0.35, yi + 0.35], -EQUIVALENCE_MARGIN, EQUIVALENCE_MARGIN, color="k", alpha=0.07)
        if not np.isnan(r.ci_low):
            ax.plot([r.ci_low, r.ci_high], [yi, yi], color=c, lw=2.5, solid_capstyle="butt")
        seeds = [float(x) for x in str(r.per_seed).split()]
        ax.plot(seeds, np.full(len(seeds), yi), "o", color=c, ms=3.5, alpha=0.8)
        ax.plot([r.mean_diff], [yi], "|", color=c, ms=14, mew=2)
        if not np.isnan(r.paper_FI_diff):
            ax_fi.plot([r.paper_FI_diff], [yi], "D", color="k", ms=5)
            ax_fi.annotate(
                f"{r.paper_FI_diff:+.2f}",
                (r.paper_FI_diff, yi),
                xytext=(0, 6),
                textcoords="offset points",
                ha="center",
                fontsize=7,
            )
    ax.set_yticks(y, [f"{r.comparison}: {r.verdict}" for r in claims.itertuples()], fontsize=9)
    ax.set_xlabel("this run: difference in test accuracy, a - b (points)")
    ax.set_title(f"Sec. 4.3's comparisons, {run_label}", fontsize=10)
    ax_fi.set_xlabel("paper, FI: a - b (points)")
    ax_fi.set_title("paper, Table 1 (FI)", fontsize=10)
    ax_fi.margins(x=0.25)
    handles = [Line2D([], [], color=c, lw=2.5, label=k) for k, c in VERDICT_COLOURS.items()]
    handles += [Line2D([], [], color="grey", marker="o", ls="", ms=3.5, label="one seed")]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=5, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Table 1 by the ablation sweep


def plot_sweep(df: pd.DataFrame, run_label: str = "this run", chance: float | None = 12.5):
    """Two panels sharing the rows: bars of this run's test accuracy, and the paper's FI numbers as markers.
    Separate axes, because the data differ: a synthetic or small dataset's accuracy is not FI's."""
    import matplotlib.pyplot as plt

    labels = [f"{v}  ({r.split(' (')[0]})" for v, r in zip(df["variant"], df["table1_row"])]
    y = np.arange(len(df))[::-1]
    kinds = df["trained"].str.startswith("head").map({True: "C0", False: "C1"})
    kinds[df["variant"].str.endswith("(fine-tuned)")] = "C2"
    fig, (ax, axp) = plt.subplots(
        1, 2, sharey=True, figsize=(11, 0.42 * len(df) + 1.6), gridspec_kw={"width_ratios": [3, 2]}
    )
    ax.barh(y, df["this_run_test_acc"], color=list(kinds))
    for yi, v in zip(y, df["this_run_test_acc"]):
        ax.text(v + 1, yi, f"{v:.1f}", va="center", fontsize=8)
    if chance is not None:
        ax.axvline(chance, color="grey", ls="--", lw=1, label=f"chance {chance:.1f} %")
    ax.set_yticks(y, labels, fontsize=9)
    ax.set_xlim(0, 105)
    ax.set_xlabel("test accuracy (%)")
    ax.set_title(f"{run_label}")
    from matplotlib.patches import Patch

    handles = [
        Patch(color="C0", label="head on the shared frozen CNN"),
        Patch(color="C1", label="trains (part of) its own CNN"),
        Patch(color="C2", label="base run, CNN fine-tuned"),
    ]
    ax.legend(handles=handles + ax.get_legend_handles_labels()[0][:1], loc="lower right", fontsize=8)
    paper = df["paper_FI_acc"].astype(float)
    has = paper.notna().to_numpy()
    axp.scatter(paper[has], y[has], marker="D", color="k", zorder=3)
    for yi, v in zip(y[has], paper[has]):
        axp.text(v + 0.4, yi, f"{v:.2f}", va="center", fontsize=8)
    for yi in y[~has]:
        axp.text(56.5, yi, "not in Table 1", va="center", fontsize=8, color="grey")
    axp.set_xlim(56, 76)
    axp.set_xlabel("accuracy on FI (%)")
    axp.set_title("FI (paper, Table 1)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig. 6: confusion matrices


def paper_confusions() -> dict[str, np.ndarray]:
    """The two matrices Fig. 6 prints, rows true class, columns predicted, in emotionlib.paper.CLASSES order."""
    return {"MldrNet, FI (paper)": FIG6_MLDRNET, "Bi-GRU (Zhu et al.), FI (paper)": FIG6_OURS}


def plot_confusions(confusion, classes: Sequence[str], run_label: str):
    """Fig. 6 with this run's row-normalised matrix first: seaborn heatmaps on one colour scale (0-1)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    panels = {run_label: (np.asarray(confusion, dtype=float), list(classes))}
    panels.update({k: (v, list(PAPER_CLASSES)) for k, v in paper_confusions().items()})
    # 12.5 inches: a notebook shows it near its own size, so the 8-point numbers stay readable
    fig, axes = plt.subplots(1, 4, figsize=(12.5, 4.6), gridspec_kw={"width_ratios": [1, 1, 1, 0.05]})
    for i, (ax, (title, (cm, names))) in enumerate(zip(axes, panels.items())):
        sns.heatmap(
            cm,
            vmin=0,
            vmax=1,
            cmap="Blues",
            annot=True,
            fmt=".2f",
            annot_kws={"fontsize": 8},
            square=True,
            cbar=i == 2,
            cbar_ax=axes[3] if i == 2 else None,
            xticklabels=names,
            yticklabels=names,
            ax=ax,
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true" if i == 0 else "")
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    fig.tight_layout()
    return fig


def plot_confusion(confusion, classes, title: str, ax=None):
    """One row-normalised confusion matrix (rows true, columns predicted) on the 0-1 scale of Fig. 6."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    cm = row_normalise(confusion)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 4.6))
    sns.heatmap(
        cm,
        vmin=0,
        vmax=1,
        cmap="Blues",
        annot=True,
        fmt=".2f",
        annot_kws={"fontsize": 8},
        square=True,
        xticklabels=list(classes),
        yticklabels=list(classes),
        ax=ax,
    )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
    ax.figure.tight_layout()
    return ax.figure


def plot_architecture(cfg):
    """The unified CNN-RNN of `cfg` (a Config: its model, crop and fine-tuning rate), drawn from the model itself:
    left, the trunk's maps at every tap (channels x size, theoretical receptive field), each side branch's
    1x1 convolution and FC_k, the main branch's FC_5 over concat(FC_1..FC_k, FC), and the fusion head over
    V_1..V_T (Fig. 2, 5); right, what each training stage trains (Sec. 3.2, 4.1). Sizes follow the profile."""
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from matplotlib.patches import FancyBboxPatch

    from .model import UnifiedCNNRNN, receptive_field, tap_stage

    m = cfg.model
    model = UnifiedCNNRNN(m).eval()
    crop = cfg.data.crop
    with torch.no_grad():
        maps = model.trunk(torch.zeros(1, 3, crop, crop))
        feats = model.extract(torch.zeros(1, 3, crop, crop))
    fig, (ax, axs) = plt.subplots(1, 2, figsize=(13, 5.6), gridspec_kw={"width_ratios": [3.2, 1]})
    ax.set_xlim(-0.6, 5.6)
    ax.set_ylim(-0.6, 4.4)
    ax.axis("off")

    def box(x, y, text, colour, w=0.95, h=0.62):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02", fc=colour, ec="0.3"))
        ax.text(x, y, text, ha="center", va="center", fontsize=7.5)

    def arrow(a, b):
        ax.annotate("", xy=b, xytext=a, arrowprops={"arrowstyle": "->", "color": "0.35", "lw": 0.9})

    box(0, 3.8, f"input\n3 x {crop} x {crop}", "#eeeeee")
    pools = [k for k in maps if k.startswith("pool")]
    for i, p in enumerate(pools, start=1):
        c, s = maps[p].shape[1], maps[p].shape[2]
        r = receptive_field(m, p)[0]
        box(i, 3.8, f"{p}\n{c} x {s} x {s}\nRF {r} px", "#dbe9f6")
        arrow((i - 1 + 0.48, 3.8), (i - 0.48, 3.8))
    side = [k for k in model.feature_keys if k != "main"]
    n_at: dict[int, int] = {}
    for t, (key, tap) in enumerate(zip(side, m.taps), start=1):
        col = tap_stage(tap) + 1 if tap.startswith("pool") else 0.5
        off = 0.22 * n_at.get(col, 0)
        n_at[col] = n_at.get(col, 0) + 1
        dim = feats[key][0].shape[1]
        box(
            col + off,
            2.5 - off,
            f"{key}: 1x1 conv {m.branch_channels}\nFC {m.branch_fc} -> FC_{t}\nV_{t}: {dim}",
            "#fde2c8",
        )
        arrow((col, 3.8 - 0.32), (col + off, 2.5 - off + 0.32))
    main_dim = feats["main"][0].shape[1]
    box(5, 2.5, f"main: 1x1 conv {m.branch_channels}\nFC {m.main_fc}", "#fde2c8")
    arrow((len(pools), 3.8 - 0.32), (5, 2.5 + 0.32))
    if side:
        box(
            4,
            1.35,
            f"FC_5 over concat(FC_1..FC_{len(side)}, FC)\n"
            f"{len(side)} x {m.branch_feature} + {m.main_fc} -> V_{len(side) + 1}: {main_dim}",
            "#f9c99b",
            w=1.9,
        )
        for col in sorted(n_at):
            arrow((col, 2.5 - 0.32), (3.1, 1.35 + 0.1))
        arrow((5, 2.5 - 0.32), (4.9, 1.35 + 0.2))
    fusion = m.fusion
    T = len(model.feature_keys)
    if fusion in ("softmax", "ensemble"):
        head = {"softmax": "softmax on the main branch", "ensemble": f"mean of the {T} classifiers' scores"}[fusion]
    elif fusion in ("max", "avg"):
        head = f"{fusion} over V_1..V_{T} -> FC -> softmax ({m.num_classes})"
    else:
        dirs = 2 if fusion.startswith("bi") else 1
        head = (
            f"{'Bi-' if dirs == 2 else ''}{fusion.removeprefix('bi').upper()} over V_1..V_{T} "
            f"(hidden {m.rnn_hidden}{', both directions' if dirs == 2 else ''})\n"
            f"H: {dirs * m.rnn_hidden} -> dropout -> FC -> softmax ({m.num_classes})"
        )
    box(2.2, 0.0, head, "#d5ecd4", w=3.4, h=0.7)
    arrow((3.4, 1.35 - 0.32) if side else (5, 2.5 - 0.32), (2.6, 0.36))
    if side and fusion not in ("softmax",):
        ax.text(0.3, 0.75, f"V_1..V_{len(side)}: the branches' FC_k\nV_{T}: FC_5", fontsize=7.5, color="0.3")
    ax.set_title(f"{m.variant}, {cfg.profile} profile, {crop}-px crops (RF: theoretical receptive field)", fontsize=10)

    # what each stage trains: stages x modules, filled where the stage trains the module
    stages = model.cnn_stages()
    cols = [f"trunk{i + 1}" for i in range(4)] + list(model.branches.keys()) + ["main", "head"]
    grid = np.zeros((len(stages) + 1, len(cols)))
    for r, st in enumerate(stages):
        for s in st.trunk_stages:
            grid[r, s] = 1
        for h in st.heads:
            grid[r, cols.index(h)] = 1
    finetune = cfg.train.finetune_lr > 0
    grid[-1, :] = 0.5 if finetune else 0
    grid[-1, -1] = 1
    axs.imshow(grid, cmap="Greens", vmin=0, vmax=1.2, aspect="auto")
    axs.set_xticks(range(len(cols)), cols, rotation=60, ha="right", rotation_mode="anchor", fontsize=8)
    axs.set_yticks(range(len(stages) + 1), [s.name for s in stages] + ["fusion"], fontsize=8)
    axs.set_xticks(np.arange(-0.5, len(cols)), minor=True)
    axs.set_yticks(np.arange(-0.5, len(stages) + 1), minor=True)
    axs.grid(which="minor", color="w", lw=1)
    axs.grid(which="major", visible=False)
    axs.set_title("what each stage trains" + ("\n(fusion: head; CNN fine-tuned, pale)" if finetune else ""), fontsize=9)
    fig.tight_layout()
    return fig


def fig6_tpr_table(metrics: Mapping[str, Any], run_label: str = "this run") -> pd.DataFrame:
    """True-positive rate per class (the confusion diagonal): this run beside the paper's two, by class name.
    A class of the run that FI lacks gets NaN in the paper's columns, and the other way round."""
    run = dict(metrics["per_class_tpr"])
    names = list(metrics["classes"]) + [c for c in PAPER_CLASSES if c not in metrics["classes"]]
    cols = {run_label: [run.get(c, float("nan")) for c in names]}
    for title, cm in paper_confusions().items():
        diag = dict(zip(PAPER_CLASSES, np.diag(cm)))
        cols[title] = [diag.get(c, float("nan")) for c in names]
    df = pd.DataFrame(cols, index=pd.Index(names, name="class"))
    # Sec. 4.3 reads Fig. 6 for balance ("a more balanced performance"): the worst class and the spread say it
    stats = {"mean": df.mean(), "min": df.min(), "std": df.std(ddof=0)}
    for name, row in stats.items():
        df.loc[name] = row
    return df.round(3)


def plot_counts_beside(counts: dict, reference: dict, title: str, reference_title: str):
    """Images per class of this data and of a reference (e.g. FI's published counts), each in its own labelled
    panel with its own axis: the two are never drawn on one scale. The share of each class is printed on its bar."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, values, name, colour in ((axes[0], counts, title, "C0"), (axes[1], reference, reference_title, "0.45")):
        names, n = list(values), [values[k] for k in values]
        bars = ax.bar(names, n, color=colour)
        total = sum(n)
        ax.bar_label(bars, labels=[f"{100 * v / total:.0f} %" for v in n], fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("images")
        ax.margins(y=0.15)
        plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- Fig. 3 and the probes (probes.py)


def plot_top_patches(tops: Sequence[ChannelTop], part: DatasetIndex, cfg: Config, cell: float = 1.1):
    """Fig. 3: one row per (layer, channel), one column per top patch, cut at the theoretical receptive field."""
    import matplotlib.pyplot as plt

    from .model import receptive_field
    from .probes import centre_crop, patch_box

    k = max(len(t.images) for t in tops)
    fig, axes = plt.subplots(len(tops), k, figsize=(cell * k + 1.6, cell * len(tops) + 0.4), squeeze=False)
    crops: dict[int, np.ndarray] = {}
    for r, t in enumerate(tops):
        size = receptive_field(cfg.model, t.layer)[0]
        for j, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if j >= len(t.images):
                ax.axis("off")
                continue
            i = t.images[j]
            img = crops.setdefault(i, centre_crop(part, i, cfg))
            left, top, right, bottom = patch_box(cfg.model, t.layer, t.rows[j], t.cols[j], *img.shape[:2])
            ax.imshow(img[top:bottom, left:right], interpolation="nearest")
            ax.set_title(f"{t.values[j]:.2f}", fontsize=7, pad=2)
        axes[r][0].set_ylabel(
            f"{t.layer} ch {t.channel}\nRF {size} px", fontsize=8, rotation=0, ha="right", va="center"
        )
    fig.suptitle(
        "top activations inside each unit's theoretical receptive field (centre crops, test split)", fontsize=10
    )
    fig.tight_layout()
    return fig


def plot_probes(df: pd.DataFrame, title: str = "linear probe accuracy (chance 0.5)"):
    """Heatmap of branches x factors, on a fixed 0.5 (chance) - 1.0 scale."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(1.4 * df.shape[1] + 2.6, 0.55 * df.shape[0] + 1.4))
    sns.heatmap(
        df.astype(float),
        vmin=0.5,
        vmax=1.0,
        cmap="viridis",
        annot=True,
        fmt=".2f",
        ax=ax,
        cbar_kws={"label": "test accuracy"},
    )
    ax.set_xlabel("factor (synthetic data)")
    ax.set_ylabel("")
    ax.set_title(title)
    ax.tick_params(axis="y", labelrotation=0)
    fig.tight_layout()
    return fig


def plot_controlled_probes(table: pd.DataFrame, title: str = "linear probes: trained CNN vs. its random init"):
    """One panel per cue: each level's trained accuracy (bar: mean over seeds, dots: the seeds) beside its
    random-init control, the gain (trained - random init) under each level's name; pixel baselines and the
    majority rate as horizontal lines. Fixed 0.4 - 1.0 scale, so panels and runs compare at a glance; a value
    below 0.4 is a seed's triangle on the floor."""
    import matplotlib.pyplot as plt

    from .probes import MAJORITY, NO_LEVEL, SOURCES

    FLOOR = 0.4
    cues = list(table["cue"].unique())
    levels = [lv for lv in table["level"].unique() if lv != NO_LEVEL]
    baselines = [s for s in table["source"].unique() if s not in SOURCES]
    lines = iter([dict(color="C2", ls="--"), dict(color="C3", ls="-."), dict(color="C4", ls=(0, (5, 1)))])
    styles = {
        s: dict(color="0.2", ls=":") if s == MAJORITY else next(lines, dict(color="C5", ls="--")) for s in baselines
    }
    colours, width, x = {SOURCES[0]: "C0", SOURCES[1]: "0.72"}, 0.38, np.arange(len(levels))
    fig, axes = plt.subplots(1, len(cues), figsize=(3.3 * len(cues) + 0.4, 3.9), sharey=True, squeeze=False)
    for ax, cue in zip(axes[0], cues):
        t = table[table["cue"] == cue]
        means = {}
        for k, source in enumerate(SOURCES):
            acc = t[t["source"] == source]
            means[source] = acc.groupby("level", sort=False)["accuracy"].mean().reindex(levels)
            pos = x + (k - 0.5) * width
            ax.bar(pos, means[source].to_numpy(), width, color=colours[source], label=source, zorder=2)
            px, y = pos[[levels.index(lv) for lv in acc["level"]]], acc["accuracy"].to_numpy()
            ax.scatter(
                px[y >= FLOOR], y[y >= FLOOR], s=9, color="black", zorder=3, label="one seed" if k == 0 else None
            )
            ax.scatter(
                px[y < FLOOR], np.full((y < FLOOR).sum(), FLOOR + 0.015), marker="v", s=14, color="black", zorder=3
            )  # off the scale: a triangle on the floor says so
        for source in baselines:
            ax.axhline(t[t["source"] == source]["accuracy"].mean(), lw=1.3, label=source, zorder=4, **styles[source])
        gain = means[SOURCES[0]] - means[SOURCES[1]]
        ax.set_xticks(x, [f"{lv.replace(' (', chr(10) + '(')}\n{g:+.2f}" for lv, g in gain.items()], fontsize=8)
        ax.set_ylim(FLOOR, 1.0)
        ax.set_title(cue)
        ax.grid(axis="x", visible=False)
    axes[0][0].set_ylabel("probe test accuracy")
    handles, labels = axes[0][0].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: (labels[i] not in SOURCES, labels[i] != "one seed"))
    fig.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="lower center",
        ncol=len(labels),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(f"{title} (under each level: gain = trained - random init)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


# ----------------------------------------------------------------------------- Fig. 7-8 (small.py)


def plot_tpr(table: pd.DataFrame, title: str | None = None, metric: str = "ova_tpr"):
    """Grouped bars as in Fig. 7: one group per class and the mean as the last group, one colour per method, and
    the metric's chance level as a dashed line."""
    import matplotlib.pyplot as plt

    from .small import metric_chance, metric_label

    groups, m = list(table.columns), len(table)
    name = metric_label(metric, len(groups) - 1)
    x = np.arange(len(groups), dtype=float)
    x[-1] += 0.5  # a gap sets the mean apart from the classes
    width = 0.8 / m
    fig, ax = plt.subplots(figsize=(1.0 * len(groups) + 3.5, 3.6))
    colours = plt.get_cmap("tab10").colors
    for i, (label, row) in enumerate(table.iterrows()):
        ax.bar(x + (i - (m - 1) / 2) * width, row.to_numpy(dtype=float), width, label=label, color=colours[i % 10])
    chance = metric_chance(metric, len(groups) - 1)
    ax.axhline(chance, color="0.4", ls="--", lw=1, label=f"chance ({chance:.3g})")
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.grid(axis="x", visible=False)  # vertical grid lines would run through the groups
    ax.set_ylabel(name.split(":")[0])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(name if not title else f"{name}\n{title}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_boxes_on_image(image, boxes: dict, title: str = "", size: float = 4.2):
    """Nested boxes (label -> (left, top, right, bottom), right and bottom exclusive) drawn on one image, e.g. the
    receptive fields of pool1-pool4 at one unit. A box that reaches every border is dashed: it was clipped there."""
    import matplotlib.patheffects as pe
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(size, size + 0.35 * len(boxes)))
    ax.imshow(image, interpolation="nearest", extent=(0, w, h, 0))
    for k, (label, (left, top, right, bottom)) in enumerate(boxes.items()):
        clipped = (left, top, right, bottom) == (0, 0, w, h)
        # inset by a fraction of a pixel per box so that boxes clipped at the same border stay visible
        inset = 0.4 * k
        ax.add_patch(
            Rectangle(
                (left + inset, top + inset),
                right - left - 2 * inset,
                bottom - top - 2 * inset,
                fill=False,
                lw=2,
                ls="--" if clipped else "-",
                color=f"C{k}",
                label=label,
                path_effects=[pe.withStroke(linewidth=3.5, foreground="white")],
            )
        )  # any image
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=1, fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
