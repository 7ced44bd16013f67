"""The set-up: environment.yml and pyproject.toml pin the same versions; CI runs the README's command."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]
    pins = {}
    for r in reqs:
        name, _, version = r.partition("==")
        assert version, f"pyproject.toml: {r!r} is not pinned with =="
        pins[name.lower()] = version
    return pins


def conda_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.fullmatch(r"\s*-\s+([A-Za-z0-9_.\-]+)==([^\s#]+)\s*", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_matches_pyproject():
    assert conda_pins() == pyproject_pins()


def test_torch_pins_are_the_required_ones():
    pins = pyproject_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme.split("\n## ")[0]
    assert "make reproduce" in readme.split("\n## ")[0]
