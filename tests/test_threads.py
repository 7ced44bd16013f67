"""The thread policy (emotionlib.threads): parsing, the environment variable, the choice, the record in the run
folder, and what --deterministic guarantees: bit-identical results within one thread count."""

import json
import os

import pytest
import torch

from emotionlib import threads
from emotionlib.cli import main
from emotionlib.errors import ConfigError
from emotionlib.synth import generate


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data") / "synth", per_class=3, size=64, seed=3, progress=False)


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    n = torch.get_num_threads()
    monkeypatch.setattr(threads, "_chosen", None)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("text, want", [("1", 1), (" 3 ", 3), (2, 2), ("auto", "auto"), ("CORES", "cores")])
def test_parse_threads(text, want):
    assert threads.parse_threads(text) == want


@pytest.mark.parametrize("text", ["0", "-1", "abc", "1.5", "", True])
def test_parse_threads_refuses_in_one_line(text):
    with pytest.raises(ConfigError, match=r"^--threads .*(at least 1 thread|give a number of threads)"):
        threads.parse_threads(text)


@pytest.mark.parametrize("bad", ["0", "-1", "abc"])
def test_cli_refuses_bad_threads_with_one_line_and_exit_2(tmp_path, capsys, bad):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--data", str(tmp_path), "--threads", bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"emotionlib train: error: --threads '{bad}'")
    assert not out.exists()


def test_choose_threads():
    assert threads.choose_threads("cores", cores=4, load=3.0) == 4  # the default ignores the load
    assert threads.choose_threads("auto", cores=2, load=0.0) == 2
    assert threads.choose_threads("auto", cores=2, load=1.0) == 1  # one busy process on two cores: one thread
    assert threads.choose_threads("auto", cores=2, load=7.0) == 1  # never none
    assert threads.choose_threads("auto", cores=8, load=2.4) == 6
    assert threads.choose_threads("auto", cores=4, load=None) == 4
    assert threads.choose_threads(16, cores=2, load=0.0) == 2  # more threads than cores only wait for each other
    assert threads.choose_threads(1, cores=2, load=0.0) == 1


def test_set_threads_reads_the_environment_variable(monkeypatch):
    monkeypatch.setenv(threads.ENV, "1")
    rec = threads.set_threads()
    assert rec["setting"] == 1 and rec["from"] == threads.ENV and rec["intra_op"] == torch.get_num_threads() == 1
    monkeypatch.setenv(threads.ENV, "lots")
    with pytest.raises(ConfigError, match=f"^{threads.ENV} 'lots'"):
        threads.set_threads()


def test_default_is_the_usable_cores_unless_omp_num_threads_is_set(monkeypatch):
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    rec = threads.set_threads()
    assert rec["setting"] == "cores" and rec["intra_op"] == len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.set_threads()["intra_op"] == 1


def test_prepare_environment_chooses_the_wait_policy_and_keeps_a_users():
    assert threads.prepare_environment({}) == {"GOMP_SPINCOUNT": "10000"}  # the default: a short spin
    assert threads.prepare_environment({}, "auto")["OMP_WAIT_POLICY"] == "PASSIVE"
    assert threads.prepare_environment({threads.ENV: "auto"})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert threads.prepare_environment({}, 2) == {"GOMP_SPINCOUNT": "10000"}
    assert threads.prepare_environment({"OMP_WAIT_POLICY": "ACTIVE"}, "auto") == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_one_thread_restores_the_count():
    torch.set_num_threads(2)
    with threads.one_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with threads.one_thread(torch.device("cuda")):  # only the CPU's threads
        assert torch.get_num_threads() == 2


def test_run_folder_records_the_thread_count(tmp_path, capsys, tiny_data):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(tiny_data),
                "--out",
                str(out),
                "--profile",
                "tiny",
                "--device",
                "cpu",
                "--batch-size",
                "16",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    rec = json.loads((out / "run.json").read_text())["threads"]
    assert len(rec) == 1 and rec[0]["setting"] == 1 and rec[0]["intra_op"] == 1 and rec[0]["from"] == "--threads"


def _tiny_step(seed: int, n_threads: int) -> torch.Tensor:
    torch.set_num_threads(n_threads)
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(3, 16, 5)
    x = torch.randn(8, 3, 40, 40)
    conv(x).square().mean().backward()
    return torch.cat([conv.weight.grad.flatten(), conv(x).flatten()[:1000]])


def test_same_seed_same_threads_is_bit_identical():
    """--deterministic's guarantee (README): within one thread count, a rerun gives the same bits."""
    torch.use_deterministic_algorithms(True)
    try:
        for n in (1, 2):
            assert torch.equal(_tiny_step(0, n), _tiny_step(0, n))
    finally:
        torch.use_deterministic_algorithms(False)
