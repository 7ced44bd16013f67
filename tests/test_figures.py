"""Plots of emotionlib.figures: what they draw, checked on the figure's own artists."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from emotionlib import figures  # noqa: E402


def test_plot_confusion_normalises_the_rows():
    cm = np.array([[3, 1], [0, 2]])
    fig = figures.plot_confusion(cm, ["a", "b"], "t")
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.75", "0.25", "0.00", "1.00"]
    assert fig.axes[0].get_title() == "t"


def test_plot_table1_keeps_the_legend_off_the_rows():
    import pandas as pd

    table = pd.DataFrame(
        {
            "variant": ["bigru", "max"],
            "table1_row": ["CNN+5 Branches+Bi-GRU", "x (not in Table 1)"],
            "mean": [80.0, 79.0],
            "ci_low": [70.0, 75.0],
            "ci_high": [90.0, 83.0],
            "n_seeds": [3, 3],
            "paper_FI_acc": [73.03, float("nan")],
        }
    )
    runs = pd.DataFrame({"variant": ["bigru"] * 3 + ["max"] * 3, "test_acc": [75.0, 80.0, 85.0, 77.0, 79.0, 81.0]})
    fig = figures.plot_table1(table, runs, "run", chance=12.5, ceiling=87.5)
    legend = fig.axes[0].get_legend()
    fig.canvas.draw()
    box, axbox = legend.get_window_extent(), fig.axes[0].get_window_extent()
    assert box.y1 <= axbox.y0  # below the axis, not over the last rows' seeds


def test_plot_architecture_follows_the_profile():
    from emotionlib.config import get_config

    def texts(profile):
        fig = figures.plot_architecture(get_config(profile))
        return " | ".join(t.get_text() for t in fig.axes[0].texts)

    smoke, paper = texts("smoke"), texts("paper")
    cfg_s, cfg_p = get_config("smoke"), get_config("paper")
    assert f"1x1 conv {cfg_s.model.branch_channels}" in smoke and f"1x1 conv {cfg_p.model.branch_channels}" in paper
    assert (
        f"3 x {cfg_s.data.crop} x {cfg_s.data.crop}" in smoke and f"3 x {cfg_p.data.crop} x {cfg_p.data.crop}" in paper
    )
    assert "concat(FC_1..FC_4, FC)" in smoke and "Bi-GRU over V_1..V_5" in smoke
    four = " | ".join(
        t.get_text()
        for t in figures.plot_architecture(get_config("smoke", **{"model.variant": "bigru4"})).axes[0].texts
    )
    assert "concat(FC_1..FC_3, FC)" in four and "V_1..V_4" in four


def test_plot_counts_beside_keeps_each_source_on_its_own_axis():
    from emotionlib import paper

    ours = {c: 200 for c in paper.FI_CLASS_COUNTS}
    fig = figures.plot_counts_beside(ours, paper.FI_CLASS_COUNTS, "this data", "FI (published counts)")
    a, b = fig.axes
    assert a.get_title() == "this data" and b.get_title() == "FI (published counts)"
    assert a.get_ylim()[1] < 300 < b.get_ylim()[1]  # separate scales
    assert sum(paper.FI_CLASS_COUNTS.values()) == 23308
    shares = [t.get_text() for t in b.texts]
    assert shares[1] == "5 %" and shares[6] == "4 %"  # anger and fear: the rare classes


def test_plot_boxes_on_image_draws_each_box_and_dashes_the_clipped_one():
    image = np.zeros((64, 64, 3), np.uint8)
    boxes = {"pool1": (30, 30, 36, 36), "pool2": (20, 20, 46, 46), "pool4": (0, 0, 64, 64)}
    fig = figures.plot_boxes_on_image(image, boxes, "t")
    ax = fig.axes[0]
    drawn = {p.get_label(): p for p in ax.patches}
    assert list(drawn) == list(boxes)
    assert drawn["pool1"].get_width() == 6 and drawn["pool1"].get_xy() == (30, 30)
    assert drawn["pool4"].get_linestyle() == "--" and drawn["pool2"].get_linestyle() == "-"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(boxes)


def test_plot_accuracy_puts_the_papers_numbers_on_their_own_axis():
    fig = figures.plot_accuracy(
        {"FC_1": 40.0, "Bi-GRU": 90.0},
        {"Bi-GRU": 73.03},
        chance=12.5,
        ours_label="this run",
        reference_label="paper, FI",
    )
    ours, paper = fig.axes
    assert [t.get_text() for t in ours.get_xticklabels()] == ["FC_1", "Bi-GRU"]
    assert [p.get_height() for p in ours.patches] == [40.0, 90.0]
    assert [p.get_height() for p in paper.patches] == [73.03]
    assert (ours.get_title(), paper.get_title()) == ("this run", "paper, FI")
    assert len(figures.plot_accuracy({"a": 1.0}).axes) == 1  # no reference, no second panel


def test_plot_claims_puts_the_papers_fi_difference_in_its_own_panel():
    import pandas as pd

    claims = pd.DataFrame(
        [
            {
                "comparison": "a vs b",
                "kind": "better",
                "per_seed": "+1.0 -2.0 +0.5",
                "mean_diff": -0.17,
                "ci_low": -3.9,
                "ci_high": 3.6,
                "verdict": "undecided",
                "paper_FI_diff": 7.17,
            }
        ]
    )
    fig = figures.plot_claims(claims, "smoke")
    ours, paper = fig.axes
    assert [list(line.get_xdata()) for line in paper.lines if line.get_marker() == "D"] == [[7.17]]
    assert not [line for line in ours.lines if line.get_marker() == "D"]
