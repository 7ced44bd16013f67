"""The notebook pipeline: `emotionlib reproduce` runs notebooks/NN_*.ipynb in order with papermill.

Netflix's papermill practice: a notebook plus its parameters is an immutable input, and its
executed copy in RUN/notebooks/ is the record of what ran. Notebooks pass results to each other only through
files in the run folder, so a rerun can skip every notebook whose executed copy is complete.

The helpers the notebooks share are in emotionlib.notebook.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError, NotebookError, RunFolderError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
BUILTIN_DATA = REPO / "data" / "synthetic"
DEFAULT_KERNEL = "emotionlib"
#: What `reproduce` passes to every notebook; each must declare all of them in its `parameters` cell.
PIPELINE_PARAMETERS = ("profile", "data_dir", "run_dir", "device", "seed", "seeds", "threads", "overrides")
#: Notebook 07's small dataset (Sec. 4.4): `reproduce` passes these only to the notebooks that declare them.
SMALL_PARAMETERS = ("small_data_dir", "layout", "folds")
_NAME = re.compile(r"\d\d_[A-Za-z0-9_-]+\.ipynb")


# ----------------------------------------------------------------------------- what to run


def notebook_paths(folder: str | os.PathLike = NOTEBOOKS) -> list[Path]:
    """The pipeline's notebooks, `NN_topic.ipynb`, in reading order (scratch notebooks are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--notebooks {folder}: no such folder; run from a clone of the repository")
    paths = sorted(p for p in folder.iterdir() if _NAME.fullmatch(p.name))
    if not paths:
        raise ConfigError(f"--notebooks {folder}: holds no NN_topic.ipynb notebooks")
    return paths


def _read(path: Path):
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, not a notebook
        raise ConfigError(f"{path} is not a readable notebook ({type(e).__name__}); restore it from git") from None


def parameters_cell(nb, path: str | os.PathLike = "notebook"):
    """The one code cell tagged `parameters` (papermill injects its values after it)."""
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ConfigError(f"{path}: has {len(cells)} code cells tagged `parameters`; tag exactly one")
    return cells[0]


def declared_parameters(path: str | os.PathLike) -> dict[str, str]:
    """name -> default (as source text) of every variable the `parameters` cell assigns."""
    cell = parameters_cell(_read(Path(path)), path)
    try:
        tree = ast.parse(cell.source)
    except SyntaxError as e:
        raise ConfigError(f"{path}: the `parameters` cell is not valid Python (line {e.lineno})") from None
    out = {}
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for t in targets:
            if isinstance(t, ast.Name) and node.value is not None:
                out[t.id] = ast.get_source_segment(cell.source, node.value)
    return out


def check_parameters(paths: list[Path], params: dict[str, Any]) -> None:
    """Every parameter must be declared by every notebook: papermill would only warn and run on with the
    notebook's own default, which is how a run silently ends up on the wrong data."""
    for p in paths:
        missing = sorted(set(params) - set(declared_parameters(p)))
        if missing:
            raise ConfigError(
                f"{p.name} declares no parameter {', '.join(missing)} in its `parameters` cell; add it "
                "there or do not pass it"
            )


def check_kernel(name: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    try:
        ksm.get_kernel_spec(name)
    except NoSuchKernel:
        have = ", ".join(sorted(ksm.find_kernel_specs())) or "none"
        raise ConfigError(
            f"--kernel {name}: no such Jupyter kernel (installed: {have}); `make setup` installs "
            f"{DEFAULT_KERNEL!r}, or pass --kernel NAME"
        ) from None


def executed_copy_state(
    path: str | os.PathLike, params: dict[str, Any], source: str | os.PathLike | None = None
) -> str | None:
    """Why the executed copy at `path` must be run again, or None if it is complete: it exists, every code cell
    ran, no cell holds an error, it ran with these parameters and (given `source`) the same code."""
    import nbformat

    path = Path(path)
    if not path.exists():
        return "not run yet"
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:
        return "unreadable"
    if any(o.get("output_type") == "error" for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])):
        return "failed"
    if any(c.cell_type == "code" and c.source.strip() and c.get("execution_count") is None for c in nb.cells):
        return "incomplete"
    ran_with = nb.metadata.get("papermill", {}).get("parameters")
    if _jsonable(ran_with) != _jsonable(params):
        return "other parameters"
    if source is not None and _code(nb) != _code(_read(Path(source))):
        return "the notebook changed"
    return None


def _code(nb) -> list[str]:
    return [
        c.source
        for c in nb.cells
        if c.cell_type == "code" and "injected-parameters" not in c.get("metadata", {}).get("tags", [])
    ]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


# ----------------------------------------------------------------------------- running


class _CellTicker:
    """Stands in for papermill's per-notebook bar: each finished cell ticks the pipeline's overall bar."""

    def __init__(self, bar):
        self.bar, self.n = bar, 0

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_description(self, *a, **k) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _engine():
    from papermill.engines import NBClientEngine, papermill_engines

    class Engine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, overall_bar=None, **kw):
            if overall_bar is not None:
                nb_man.pbar = _CellTicker(overall_bar)
            return super().execute_managed_notebook(nb_man, kernel_name, **kw)

    papermill_engines.register("emotionlib", Engine)
    return "emotionlib"


def run_notebooks(
    paths: list[Path],
    out_dir: str | os.PathLike,
    params: dict[str, Any],
    *,
    kernel: str = DEFAULT_KERNEL,
    force: bool = False,
    cwd: str | os.PathLike | None = None,
    progress: bool = True,
    local: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Execute `paths` in order into `out_dir` (same file names) with `params`; return one record per notebook.
    `local` parameters go only to the notebooks that declare them (notebook 07's small dataset); each must be
    declared by at least one.

    Everything is checked before the first cell runs: the kernel, and that each notebook declares each parameter.
    A notebook whose executed copy is complete (`executed_copy_state`) is skipped unless `force`. The first
    failure stops the run with a NotebookError naming the executed copy that holds the traceback.
    """
    import papermill as pm
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    from .utils import progress_bar, read_json, write_json

    paths = [Path(p) for p in paths]
    check_kernel(kernel)
    check_parameters(paths, params)
    local = dict(local or {})
    declared = {p: set(declared_parameters(p)) for p in paths}
    unused = sorted(set(local) - set().union(*declared.values()))
    if unused:
        raise ConfigError(
            f"no notebook declares the parameter {', '.join(unused)}; add it to the notebook that "
            "needs it or do not pass it"
        )
    each = {p: {**params, **{k: v for k, v in local.items() if k in declared[p]}} for p in paths}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cwd = Path(cwd) if cwd is not None else paths[0].parent
    engine = _engine()
    plan = [
        (p, out_dir / p.name, "forced" if force else executed_copy_state(out_dir / p.name, each[p], p)) for p in paths
    ]
    sizes = [len(_read(p).cells) + (1 if each[p] else 0) for p in paths]  # + papermill's injected cell
    records: list[dict[str, Any]] = []
    log = out_dir / "pipeline.json"
    earlier = {}  # a skipped notebook keeps the time of the run that made its executed copy
    if log.exists():
        try:
            earlier = {r["notebook"]: r for r in read_json(log)["notebooks"]}
        except (ValueError, KeyError, TypeError):
            pass
    bar = progress_bar(total=sum(sizes), desc="notebooks", enabled=progress, unit="cell")
    widgets = _no_widgets()
    try:
        for (src, dst, why), size in zip(plan, sizes):
            if why is None:
                bar.update(size)
                bar.write(f"{src.name}: complete in {_show(dst)}, skipped (--force reruns it)", file=sys.stderr)
                records.append(
                    {"notebook": src.name, "status": "skipped", "seconds": earlier.get(src.name, {}).get("seconds")}
                )
                continue
            start = time.perf_counter()
            bar.write(f"{src.name}: running ({why})", file=sys.stderr)
            bar.set_postfix_str(src.name)
            try:
                pm.execute_notebook(
                    src,
                    dst,
                    parameters=each[src],
                    kernel_name=kernel,
                    cwd=str(cwd),
                    engine_name=engine,
                    progress_bar=False,
                    overall_bar=bar,
                )
            except pm.PapermillExecutionError as e:
                evalue = (str(e.evalue).strip().splitlines() or [""])[0][:200]
                raise NotebookError(
                    f"{src.name} failed in cell {e.exec_count} ({e.ename}: {evalue}); the traceback is in {_show(dst)}"
                ) from None
            except (DeadKernelError, CellTimeoutError) as e:  # out of memory, a crash, a hung cell
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise NotebookError(f"{src.name}: the kernel stopped ({first}); what ran is in {_show(dst)}") from None
            seconds = round(time.perf_counter() - start, 1)
            bar.write(f"{src.name}: done in {seconds:.0f} s -> {_show(dst)}", file=sys.stderr)
            records.append({"notebook": src.name, "status": "executed", "seconds": seconds})
            write_json(log, {"parameters": params, "local": local, "kernel": kernel, "notebooks": records})
    finally:
        _restore(widgets)
        bar.close()
    write_json(log, {"parameters": params, "local": local, "kernel": kernel, "notebooks": records})
    return records


def _show(p: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def ensure_data(data_dir: str | os.PathLike | None = None, progress: bool = False) -> Path:
    """The dataset folder; the built-in synthetic data (data/synthetic) is generated when it is missing or was
    written by an older generator."""
    path = Path(data_dir) if data_dir is not None else BUILTIN_DATA
    if path.resolve() == BUILTIN_DATA.resolve():
        from .synth import BUILTIN, ensure

        return ensure(path, progress=progress, **BUILTIN)
    if not path.exists():
        raise DataError(
            f"--data {path} does not exist; give the FI folder (data/README.md) or leave --data out "
            "for the built-in data"
        )
    return path


def _check_types(cfg, overrides: dict[str, Any]) -> None:
    """A number or true/false where the configuration has one: validation compares values and would fail with a
    TypeError deep inside on --set train.lr=abc."""
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        default = getattr(getattr(cfg, section, None), name, None)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"--set {key}={value!r}: give true or false")
        elif isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"--set {key}={value!r}: give a number (the profile's is {default})")


def reproduce(
    profile: str = "smoke",
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    kernel: str = DEFAULT_KERNEL,
    force: bool = False,
    device: str = "auto",
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    notebooks: str | os.PathLike = NOTEBOOKS,
    progress: bool = True,
    seeds: int = 3,
    threads: int | str | None = None,
    overrides: dict[str, Any] | None = None,
    small_data: str | os.PathLike | None = None,
    layout: str | None = None,
    folds: int | None = None,
) -> Path:
    """Run every notebook on `data` with `profile` into the run folder `out` (default runs/<profile>); Table 1's
    protocol and the probes use the seeds seed .. seed + seeds - 1 (emotionlib.experiment); `threads` is the
    kernels' intra-op thread setting (emotionlib.threads: a number, "cores" or "auto"; None: $EMOTIONLIB_THREADS,
    else "cores"). `overrides` (dotted configuration keys) reach every notebook's configuration; `small_data`,
    `layout`, `folds` notebook 07's."""
    from .config import PROFILES, get_config
    from .threads import DEFAULT, ENV, parse_threads, prepare_environment

    if profile not in PROFILES:
        raise ConfigError(f"--profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(
            f"--seeds {seeds!r}: give a whole number of seeds, at least 1 (3 for an interval that can decide)"
        )
    paths = notebook_paths(notebooks)
    run = Path(out) if out is not None else REPO / "runs" / profile
    if run.exists() and not run.is_dir():
        raise RunFolderError(f"--out {run} is a file, not a folder")
    overrides = dict(overrides or {})
    _check_types(get_config(profile), overrides)
    try:  # the configuration's own validation, before anything runs
        get_config(profile, **overrides)
    except ConfigError as e:
        raise ConfigError(f"--set: {e}") from None
    data_path = Path(data) if data is not None else BUILTIN_DATA
    needs_small = any("small_data_dir" in declared_parameters(p) for p in paths)
    if needs_small and small_data is None and data_path.resolve() != BUILTIN_DATA.resolve():
        # else notebook 07 would report Sec. 4.4 on the built-in stand-in beside a model trained on `data`
        raise ConfigError(
            f"--data {data_path} is not the built-in data: give notebook 07's small dataset with "
            "--small-data DIR (and --layout artphoto or iaps)"
        )
    # absolute paths: the kernels run in the notebooks folder, not where the command was typed
    threads = (
        parse_threads(os.environ.get(ENV, DEFAULT), ENV) if threads is None else parse_threads(threads, "--threads")
    )
    params = {
        "profile": profile,
        "data_dir": str(data_path.resolve()),
        "run_dir": str(run.resolve()),
        "device": device,
        "seed": seed,
        "seeds": seeds,
        "threads": threads,
        "overrides": overrides,
        **(extra or {}),
    }
    local = {
        k: v
        for k, v in (
            ("small_data_dir", None if small_data is None else str(Path(small_data).resolve())),
            ("layout", layout),
            ("folds", folds),
        )
        if v is not None
    }
    check_kernel(kernel)
    check_parameters(paths, params)  # before the data is generated: nothing runs on a bad command line
    ensure_data(data_path, progress=progress)
    # the kernels inherit this environment: the wait policy before their torch loads OpenMP, and the setting for
    # library code that runs before (or without) the notebook's own set_threads(threads)
    prepare_environment(setting=params["threads"])
    os.environ[ENV] = str(params["threads"])
    run_notebooks(
        paths,
        run / "notebooks",
        params,
        kernel=kernel,
        force=force,
        cwd=Path(notebooks),
        progress=progress,
        local=local,
    )
    return run


def _no_widgets() -> str | None:
    """Tell the kernels papermill is about to start (they inherit this environment) that no front end renders
    widgets, so their progress bars print plain lines into the executed copy (utils.progress_bar)."""
    from .utils import NO_WIDGETS_ENV

    before = os.environ.get(NO_WIDGETS_ENV)
    os.environ[NO_WIDGETS_ENV] = "1"
    return before


def _restore(before: str | None) -> None:
    from .utils import NO_WIDGETS_ENV

    if before is None:
        os.environ.pop(NO_WIDGETS_ENV, None)
    else:
        os.environ[NO_WIDGETS_ENV] = before


def refresh_notebooks(
    notebooks: str | os.PathLike = NOTEBOOKS,
    kernel: str = DEFAULT_KERNEL,
    names: list[str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """`make notebooks`: execute the committed notebooks in place with their default parameters, so they carry the
    reference smoke run's outputs that nbval compares against. Timing metadata is dropped to keep diffs small."""
    import nbformat
    import papermill as pm

    paths = [p for p in notebook_paths(notebooks) if names is None or p.name in names]
    check_kernel(kernel)
    for p in paths:
        parameters_cell(_read(p), p)
    engine = _engine()
    from .utils import progress_bar

    bar = progress_bar(total=sum(len(_read(p).cells) for p in paths), desc="notebooks", enabled=progress, unit="cell")
    widgets = _no_widgets()
    try:
        for p in paths:
            bar.set_postfix_str(p.name)
            try:
                pm.execute_notebook(
                    p, p, kernel_name=kernel, cwd=str(p.parent), engine_name=engine, progress_bar=False, overall_bar=bar
                )
            except pm.PapermillExecutionError as e:
                raise NotebookError(
                    f"{p.name} failed in cell {e.exec_count} ({e.ename}); the traceback is in "
                    f"{_show(p)} (git checkout it to undo)"
                ) from None
            nb = nbformat.read(p, as_version=4)
            nb.metadata.pop("papermill", None)
            for c in nb.cells:
                c.metadata.pop("papermill", None)
                c.metadata.pop("execution", None)
            nbformat.write(nb, p)
            bar.write(f"{p.name}: refreshed", file=sys.stderr)
    finally:
        _restore(widgets)
        bar.close()
    return paths


# ----------------------------------------------------------------------------- command line


def _parse_param(text: str, option: str = "--param", example: str = "seed=1") -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"{option} {text!r}: use NAME=VALUE, e.g. {option} {example}")
    k, v = text.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="run the notebooks in order into a run folder (papermill)")
    p.add_argument("--profile", default="smoke", help="smoke (CPU, built-in data, minutes) or paper (Sec. 4.1, GPU)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset folder (default: the built-in data, generated into data/synthetic when missing)",
    )
    p.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<profile>)")
    p.add_argument("--kernel", default=DEFAULT_KERNEL, help="Jupyter kernel (default: emotionlib, from make setup)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--seeds", type=int, default=3, help="seeds of Table 1's protocol and the probes (default 3)")
    p.add_argument(
        "--threads",
        default=None,
        metavar="N|cores|auto",
        help="the notebook kernels' CPU threads (emotionlib.threads): a number, 'cores' (default) or "
        "'auto' (from the load; not reproducible across loads)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="a dotted configuration key for every notebook, e.g. --set train.stage_epochs=2 (repeatable)",
    )
    p.add_argument(
        "--small-data",
        type=Path,
        default=None,
        help="notebook 07's small dataset (Sec. 4.4; default: the built-in stand-in, only with the built-in data)",
    )
    p.add_argument("--layout", default=None, help="the small dataset's layout: artphoto or iaps (data/README.md)")
    p.add_argument("--folds", type=int, default=None, help="cross-validation folds on the small dataset (default 5)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one more notebook parameter (every notebook must declare it)",
    )
    p.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="folder of NN_topic.ipynb notebooks")
    p.add_argument("--force", action="store_true", help="rerun notebooks whose executed copies are complete")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("notebooks", help="re-execute the committed notebooks in place (make notebooks)")
    p.add_argument("names", nargs="*", help="only these notebooks (file names)")
    p.add_argument("--kernel", default=DEFAULT_KERNEL)
    p.add_argument("--notebooks", type=Path, default=NOTEBOOKS)
    p.set_defaults(func=cmd_notebooks)


def cmd_reproduce(a) -> int:
    extra = dict(_parse_param(t) for t in a.param)
    options = {
        "profile": "--profile",
        "data_dir": "--data",
        "run_dir": "--out",
        "device": "--device",
        "seed": "--seed",
        "seeds": "--seeds",
        "threads": "--threads",
        "overrides": "--set",
        "small_data_dir": "--small-data",
        "layout": "--layout",
        "folds": "--folds",
    }
    clash = sorted(set(extra) & set(options))
    if clash:
        raise ConfigError(f"--param {clash[0]}: use the option {options[clash[0]]} instead")
    start = time.perf_counter()
    overrides = dict(_parse_param(t, "--set", "train.stage_epochs=2") for t in a.overrides)
    run = reproduce(
        a.profile,
        a.data,
        a.out,
        a.kernel,
        a.force,
        a.device,
        a.seed,
        extra,
        a.notebooks,
        seeds=a.seeds,
        threads=a.threads,
        overrides=overrides,
        small_data=a.small_data,
        layout=a.layout,
        folds=a.folds,
    )
    print(
        f"pipeline finished in {time.perf_counter() - start:.0f} s: executed notebooks in {_show(run / 'notebooks')}, "
        f"figures in {_show(run / 'figures')}, tables in {_show(run / 'tables')}"
    )
    return 0


def cmd_notebooks(a) -> int:
    start = time.perf_counter()
    done = refresh_notebooks(a.notebooks, a.kernel, a.names or None)
    print(f"{len(done)} notebooks executed in place in {time.perf_counter() - start:.0f} s")
    return 0


__all__ = [
    "reproduce",
    "run_notebooks",
    "refresh_notebooks",
    "notebook_paths",
    "declared_parameters",
    "check_parameters",
    "executed_copy_state",
    "ensure_data",
    "NotebookError",
    "add_parser",
]
