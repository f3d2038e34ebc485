"""End to end on the real SmolLM2-135M: the whole loop, and resume after SIGINT and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def write_config(tmp: Path, gsm8k_test_file: Path, name: str) -> Path:
    config = {
        "run": {"name": name, "work_dir": str(tmp / "work")},
        "input": {"path": str(gsm8k_test_file), "limit": 3},
        "llms": {"smollm2": {"backend": "transformers", "model": "smollm2-135m", "batch_size": 8}},
        "sample": {"samples_per_model": 2, "batch_size": 2, "params": {"max_tokens": 48, "seed": 3}},
        "correct": {"show_gold": True, "batch_size": 2, "params": {"max_tokens": 64}},
        "evolve": {
            "rounds": 1,
            "questions_per_seed": 1,
            "votes": 2,
            "params": {"max_tokens": 48},
            "vote_params": {"max_tokens": 48},
        },
        "store": {"root": str(tmp / "store")},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def finish(process: subprocess.Popen[bytes], timeout: float = 900) -> str:
    """Wait for a run; one that outlives `timeout` is killed rather than left running after the test."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"lema run did not finish in {timeout} s:\n{output.decode()[-3000:]}")
    assert process.returncode == 0, output.decode()[-3000:]
    return output.decode()


def lema_run(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "lema.cli", "run", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def journal_keys(tmp: Path, name: str) -> list[str]:
    keys = []
    for line in (tmp / "work" / name / "journal" / "smollm2.jsonl").read_text().splitlines():
        try:
            keys.append(json.loads(line)["key"])
        except (json.JSONDecodeError, KeyError):
            continue
    return keys


def dataset(tmp: Path, name: str) -> dict[str, str]:
    root = tmp / "store" / name
    return {f: (root / f).read_text() for f in ("cot.jsonl", "corrections.jsonl")}


def interrupt_after_first_calls(config: Path, tmp: Path, name: str, sig: signal.Signals) -> int:
    """Start a run, wait until some LLM calls are journaled, then send `sig`."""
    process = lema_run(config)
    journal = tmp / "work" / name / "journal" / "smollm2.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be interrupted"
    os.kill(process.pid, sig)
    process.wait(timeout=60)
    return len(journal_keys(tmp, name))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, gsm8k_test_file: Path) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("whole")
    return tmp, finish(lema_run(write_config(tmp, gsm8k_test_file, "whole")))


def test_whole_loop_produces_dataset_and_summary(uninterrupted: tuple[Path, str]) -> None:
    tmp, output = uninterrupted
    root = tmp / "store" / "whole"
    summary = json.loads((root / "run_summary.json").read_text())
    assert summary["stages"]["sample"]["paths"] == 3 * 2
    assert summary["stages"]["check"]["correct"] + summary["stages"]["check"]["wrong"] == 6
    assert summary["dataset"]["cot_gold"] == 3
    assert summary["llms"]["smollm2"]["completion_tokens"] > 0
    for stage, count in [
        ("correct", summary["stages"]["correct"]["dropped"]),
        ("verify", summary["stages"]["verify"]["rejected"]),
        ("evolve", summary["stages"]["evolve"]["dropped"]),
    ]:
        by_reason = sum(n for key, n in summary["drops"].items() if key.startswith(f"{stage}/"))
        assert by_reason == count, (stage, summary["drops"])  # the per-reason view adds up to the per-stage one
    assert all(key.partition("/")[2] for key in summary["drops"]), summary["drops"]  # every drop has a reason
    drops = summary["stages"]["correct"]["dropped"] + summary["stages"]["verify"]["rejected"]
    assert summary["stages"]["correct"]["mistakes"] == drops + summary["stages"]["verify"]["verified"]
    for line in (root / "corrections.jsonl").read_text().splitlines():
        example = json.loads(line)
        assert example["answer"] and example["incorrect_step"] >= 1
    assert (root / "config.yaml").is_file() and (root / "prompts" / "sample-gsm8k.yaml").is_file()
    assert "correction yield" in output


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_interrupted_run_resumes_to_the_same_dataset_without_repeating_calls(
    uninterrupted: tuple[Path, str], tmp_path: Path, gsm8k_test_file: Path, sig: signal.Signals
) -> None:
    whole_tmp, _ = uninterrupted
    name = "whole"  # same run name and settings: same ids, same seeds
    config = write_config(tmp_path, gsm8k_test_file, name)
    journaled_before = interrupt_after_first_calls(config, tmp_path, name, sig)
    assert journaled_before >= 1
    finish(lema_run(config))

    assert dataset(tmp_path, name) == dataset(whole_tmp, name)
    keys = journal_keys(tmp_path, name)
    assert len(keys) == len(set(keys)), "an LLM call was repeated after resume"
    assert set(keys) == set(journal_keys(whole_tmp, name))
    summary = json.loads((tmp_path / "store" / name / "run_summary.json").read_text())
    assert summary["llms"]["smollm2"]["journal_hits"] >= journaled_before
