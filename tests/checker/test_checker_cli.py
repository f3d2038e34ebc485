"""`lema check`: JSONL in, JSONL out in input order; malformed lines name themselves; --skip-bad reports them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from lema.cli import app

RUNNER = CliRunner()


def _write(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_results_come_in_input_order(tmp_path: Path) -> None:
    source = _write(
        tmp_path / "in.jsonl",
        [
            {"response": "The answer is 18.", "gold": "#### 18"},
            {"response": "The answer is 19.", "gold": "18"},
            {"response": "no numbers", "gold": "18"},
            {"response": "The answer is 18%.", "gold": 18},
        ],
    )
    result = RUNNER.invoke(app, ["check", "--task", "gsm8k", "--input", str(source)])
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout) == [
        {"correct": True, "predicted": "18", "reason": "numeric_equal"},
        {"correct": False, "predicted": "19", "reason": "numeric_mismatch"},
        {"correct": False, "predicted": None, "reason": "no_answer"},
        {"correct": False, "predicted": "18%", "reason": "percent_mismatch"},
    ]


def test_settings_and_patterns_apply(tmp_path: Path) -> None:
    source = _write(
        tmp_path / "in.jsonl",
        [{"response": "The answer is 18%.", "gold": "18"}, {"response": "RESULT[7] and then 9", "gold": "7"}],
    )
    result = RUNNER.invoke(
        app,
        [
            "check",
            "--task",
            "gsm8k",
            "--input",
            str(source),
            "--set",
            "checker.percent_policy=lenient",
            "--pattern",
            r"RESULT\[(\d+)\]",
        ],
    )
    assert result.exit_code == 0, result.output
    assert [line["correct"] for line in _lines(result.stdout)] == [True, True]


def test_mcq_choices_and_output_file(tmp_path: Path) -> None:
    source = _write(
        tmp_path / "in.jsonl",
        [
            {"response": "The answer is bank.", "gold": "A", "choices": ["bank", "library"]},
            {"response": "\\boxed{2A+B}", "gold": "A"},
        ],
    )
    output = tmp_path / "out.jsonl"
    result = RUNNER.invoke(app, ["check", "--task", "mcq", "--input", str(source), "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert _lines(output.read_text()) == [
        {"correct": True, "predicted": "A", "reason": "choice_equal"},
        {"correct": False, "predicted": "2A+B", "reason": "choice_mismatch"},
    ]


BAD_ROWS: list[Any] = [
    {"response": "The answer is 5.", "gold": "5"},
    "{not json",
    ["a", "list"],
    {"gold": "5"},
    {"response": "x", "gold": ["5"]},
    {"response": "x", "gold": "5", "choices": ["a", "b"]},
    {"response": "The answer is 6.", "gold": "5"},
]


def test_a_malformed_line_stops_before_any_output_and_names_the_line(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", BAD_ROWS)
    result = RUNNER.invoke(app, ["check", "--task", "gsm8k", "--input", str(source)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert f"{source}:2: invalid JSON" in result.stderr


def test_skip_bad_reports_each_malformed_line_in_place(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", ["", *BAD_ROWS])
    with source.open("ab") as appended:
        appended.write(b'{"response": "caf\xe9", "gold": "1"}\n')
    result = RUNNER.invoke(app, ["check", "--task", "gsm8k", "--input", str(source), "--skip-bad"])
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [line["reason"] for line in lines] == ["numeric_equal", *["bad_input"] * 5, "numeric_mismatch", "bad_input"]
    errors = [line["error"] for line in lines[1:-2]] + [lines[-1]["error"]]
    assert errors == [
        f"{source}:3: invalid JSON: Expecting property name enclosed in double quotes (column 2)",
        f"{source}:4: expected a JSON object, got list",
        f"{source}:5: missing field 'response'",
        f"{source}:6: field 'gold': expected a string, got list",
        f"{source}:7: field 'choices' is only for --task mcq (this is --task gsm8k)",
        f"{source}:9: not UTF-8 text (byte 17: invalid continuation byte)",
    ]


def test_bad_settings_and_patterns_exit_2(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", [{"response": "5", "gold": "5"}])
    for extra in (["--set", "checker.timeout_s=-1"], ["--pattern", "(unclosed"]):
        result = RUNNER.invoke(app, ["check", "--task", "gsm8k", "--input", str(source), *extra])
        assert result.exit_code == 2
        assert "error:" in result.stderr


def test_the_command_writes_clean_jsonl_to_stdout_with_workers_running(tmp_path: Path) -> None:
    """A real process: the symbolic workers must not leak anything into the JSONL stream."""
    source = _write(
        tmp_path / "in.jsonl",
        [
            {"response": "\\boxed{\\frac{\\sqrt{2}}{2}}", "gold": "\\frac{1}{\\sqrt2}"},
            {"response": "\\boxed{x^2}", "gold": "x^3"},
        ],
    )
    completed = subprocess.run(
        [sys.executable, "-m", "lema", "check", "--task", "math", "--input", str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert _lines(completed.stdout) == [
        {"correct": True, "predicted": "\\frac{\\sqrt{2}}{2}", "reason": "symbolic_equal"},
        {"correct": False, "predicted": "x^2", "reason": "symbolic_mismatch"},
    ]


def test_a_bad_line_in_a_latex_file_is_one_line_although_the_workers_were_starting(tmp_path: Path) -> None:
    """`--task math` starts the symbolic workers before reading the input; a bad line stops them quietly."""
    source = _write(tmp_path / "in.jsonl", [{"response": "\\boxed{x}", "gold": "x"}, "{oops"])
    completed = subprocess.run(
        [sys.executable, "-m", "lema", "check", "--task", "math", "--input", str(source)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.splitlines() == [
        f"error: {source}:2: invalid JSON: Expecting property name enclosed in double quotes (column 2)"
    ]


def test_bad_input_of_every_kind_is_one_line_and_the_rest_is_checked(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    huge = "9" * 5_000  # past Python's 4,300-digit conversion limit
    source.write_bytes(
        b"\xef\xbb\xbf"  # a byte-order mark
        + b'{"response": "The answer is 18.", "gold": 18}\n'
        + b'{"response": "The answer is \\ud800 5.", "gold": "5"}\n'  # a lone surrogate
        + b'{"response": "x", "gold": NaN}\n'
        + b'{"response": "x", "gold": -Infinity}\n'
        + b'{"response": "The answer is 10000000000000000.", "gold": 1e16}\n'
        + b'{"response": "The answer is 0.00001.", "gold": 0.00001}\n'
        + f'{{"response": "The answer is 1.", "gold": {huge}}}\n'.encode()
        + b'{"response": 5, "gold": "5"}\n'
    )
    result = RUNNER.invoke(app, ["check", "--task", "gsm8k", "--input", str(source), "--skip-bad"])
    assert result.exit_code == 0, result.output
    lines = _lines(result.stdout)
    assert [line["correct"] for line in lines] == [True, True, False, False, True, True, False, False]
    assert [line["reason"] == "bad_input" for line in lines] == [False, False, True, True, False, False, False, True]
    assert "in.jsonl:3: NaN" in lines[2]["error"] and "in.jsonl:8: field 'response'" in lines[7]["error"]
    assert "skipped 3 bad line(s) of 8; first: " in result.stderr


def test_a_lone_surrogate_in_a_predicted_answer_is_written_escaped(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", ['{"response": "The answer is \\\\text{a\\ud800}.", "gold": "b"}'])
    result = RUNNER.invoke(app, ["check", "--task", "math", "--input", str(source)])
    assert result.exit_code == 0, result.output
    assert _lines(result.stdout)[0]["predicted"] == "\\text{a\ud800}"


def test_an_empty_file_says_so(tmp_path: Path) -> None:
    source = _write(tmp_path / "in.jsonl", ["", "  "])
    result = RUNNER.invoke(app, ["check", "--task", "gsm8k", "--input", str(source)])
    assert result.exit_code == 0 and result.stdout == ""
    assert "no check requests" in result.stderr
