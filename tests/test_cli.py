"""The command line itself: what every command pays for before it starts."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torchvision", "sklearn", "pandas", "matplotlib", "papermill")


def test_building_the_parser_loads_none_of_the_heavy_libraries():
    # `emotionlib predict` should start about as fast as `import torch`: the parser of every sub-command (small,
    # bench, reproduce included) is built without importing the modules that run them.
    code = (
        "import sys, json; from emotionlib import cli; import emotionlib.evaluate\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []
    for command in ("small", "bench", "reproduce", "notebooks", "train", "predict", "variants"):
        assert command in r.stdout, command


def test_variants_lists_the_baselines_without_loading_them():
    code = (
        "import sys, json; from emotionlib import cli; cli.main(['variants'])\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "handcrafted-svm" in r.stdout and "resnet101" in r.stdout
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


def test_only_the_bench_command_imports_the_benchmarks():
    code = (
        "import sys; from emotionlib import cli\n"
        "try:\n    cli.main(['variants'])\nexcept SystemExit:\n    pass\n"
        "print('emotionlib.bench' in sys.modules)\n"
        "try:\n    cli.main(['bench', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('emotionlib.bench' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "True" and "False" in lines and "--quick" in r.stdout
