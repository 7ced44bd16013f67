"""The committed notebooks: executed, no errors, no paths of the machine they ran on, one `parameters` cell with
the pipeline's defaults, the equations they implement written out, and a closing "Try this".

These read the .ipynb files only; `make test` also runs them under nbval (--nbval-lax)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

from emotionlib import notebook, pipeline

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if re.fullmatch(r"\d\d_[A-Za-z0-9_-]+\.ipynb", p.name))
DEFAULTS = {
    "profile": '"smoke"',
    "data_dir": '"../data/synthetic"',
    "run_dir": '"../runs/smoke"',
    "device": '"auto"',
    "threads": '"cores"',
    "seed": "0",
    "seeds": "3",
    "overrides": "{}",
}
MACHINE_PATHS = ["/work", "/tmp", "/root", "/home/", sys.prefix, str(Path.home())]
#: equations each notebook implements (Sec. 3.2: Eq. 1-5; Sec. 3.3: Eq. 6-11)
EQUATIONS = {"02_branches.ipynb": range(1, 6), "03_fusion.ipynb": range(6, 12)}
#: and any notebook that calls these must write their equations out too
CALLS = {"contrastive_loss": (3, 4), "multitask_loss": (5,), "fusion_loss": (11,), "PaperGRUCell": (6, 7, 8, 9)}


def load(path: Path):
    return nbformat.read(path, as_version=4)


def ids(paths):
    return [p.name for p in paths]


def test_the_pipeline_notebooks_exist():
    names = ids(PATHS)
    for required in ("01_data.ipynb", "02_branches.ipynb", "03_fusion.ipynb", "08_report.ipynb"):
        assert required in names


@pytest.mark.parametrize("path", PATHS, ids=ids(PATHS))
def test_executed_without_errors(path):
    nb = load(path)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code
    not_run = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not not_run, f"code cells {not_run} were not executed: run `make notebooks`"
    errors = [o.get("ename") for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"error outputs {errors}"
    counts = [c.execution_count for c in code]
    assert counts == list(range(1, len(code) + 1)), "executed out of order or in pieces: run `make notebooks`"
    assert nb.metadata.get("kernelspec", {}).get("name") == "emotionlib"


@pytest.mark.parametrize("path", PATHS, ids=ids(PATHS))
def test_no_paths_of_the_machine(path):
    text = path.read_text(encoding="utf-8")
    found = sorted({p for p in MACHINE_PATHS if p and p != "/" and p in text})
    assert not found, f"{path.name} holds {found}: print paths relative to the run folder"


@pytest.mark.parametrize("path", PATHS, ids=ids(PATHS))
def test_one_parameters_cell_with_the_pipeline_defaults(path):
    declared = pipeline.declared_parameters(path)  # raises unless exactly one cell is tagged `parameters`
    assert {k: declared.get(k) for k in DEFAULTS} == DEFAULTS
    nb = load(path)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert tagged == [first_code], "the parameters cell must be the first code cell"
    assert not any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells), (
        "committed with papermill's injected parameters: run `make notebooks` (defaults only)"
    )


def _display_math(nb) -> list[str]:
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return re.findall(r"\$\$(.+?)\$\$", text, flags=re.S)


def _has_equation(blocks: list[str], n: int) -> bool:
    return any(re.search(rf"\\tag\{{{n}\}}|\(\s*{n}\s*\)\s*$", b.strip()) for b in blocks)


@pytest.mark.parametrize("path", PATHS, ids=ids(PATHS))
def test_equations_are_written_out(path):
    nb = load(path)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    needed = set(EQUATIONS.get(path.name, ()))
    for call, eqs in CALLS.items():
        if re.search(rf"\b{call}\(", source):
            needed |= set(eqs)
    blocks = _display_math(nb)
    missing = sorted(n for n in needed if not _has_equation(blocks, n))
    assert not missing, (
        f"{path.name} implements Eq. {missing} but its Markdown does not write them out ($$...\\tag{{n}}$$)"
    )
    if needed:
        sections = {"02_branches.ipynb": "Sec. 3.2", "03_fusion.ipynb": "Sec. 3.3"}
        assert sections.get(path.name, "Sec.") in "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


@pytest.mark.parametrize("path", PATHS, ids=ids(PATHS))
def test_ends_with_try_this(path):
    last = load(path).cells[-1]
    assert last.cell_type == "markdown" and re.search(r"^#+\s*Try this", last.source, flags=re.M | re.I), (
        "the last cell must be a Markdown section 'Try this'"
    )
    assert len(re.findall(r"^\s*[-*\d]", last.source.split("Try this", 1)[1], flags=re.M)) >= 1


def test_the_equation_check_can_fail():
    """The checks above on a notebook that lacks what they look for."""
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("$$L = x \\tag{5}$$ and (3) in prose"),
            nbformat.v4.new_markdown_cell("$$y = 1 \\quad (4)$$"),
        ]
    )
    blocks = _display_math(nb)
    assert [_has_equation(blocks, n) for n in (3, 4, 5, 6)] == [False, True, True, False]


def test_checked_cells_print_no_timing():
    """Cells nbval compares must not print what changes from run to run (seconds, images/s, dates)."""
    for path in PATHS:
        for c in load(path).cells:
            if c.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in c.source:
                text = json.dumps(c.get("outputs", []))
                assert not re.search(r"\d+(\.\d+)? ?(s|it/s|img/s)\b|\d{4}-\d\d-\d\d", text), (path.name, c.source[:80])


def test_the_printed_optimiser_is_the_configurations():
    """Notebook 03 names the CNN's fine-tuning optimiser from the configuration (the smoke profile's Adam, the
    paper's SGD), never from prose: its committed output must agree with the profile it ran."""
    nb = load(NOTEBOOKS / "03_fusion.ipynb")
    profile = pipeline.declared_parameters(NOTEBOOKS / "03_fusion.ipynb")["profile"].strip('"')
    printed = [
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "CNN fine-tuned with" in o.get("text", "")
    ]
    assert printed, "notebook 03 does not print the fine-tuning optimiser"
    named = re.search(r"CNN fine-tuned with (\w+)", printed[0]).group(1)
    assert named == notebook.pipeline_config(profile).train.optimizer
