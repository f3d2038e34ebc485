"""Every user error is one line on stderr (no traceback, nothing swallowed by markup); --debug shows the traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from lema.cli import main
from lema.inputs import InputError

Result = subprocess.CompletedProcess[str]
REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "data" / "demo_problems.jsonl"


def lema_process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real entry point, as a user starts it."""
    return subprocess.run(
        [sys.executable, "-m", "lema.cli", *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def lema(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`lema ARGS` in this process (the same `main` as the console script, without a 10 s start per case)."""

    def run(*args: str, cwd: Path) -> Result:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), int(exited.value.code or 0), captured.out, captured.err)

    return run


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single `error:` line of a failed command, after checking that nothing else explains the failure."""
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and "Warning" not in line]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr and "╭" not in result.stderr, result.stderr
    assert not any(line.startswith(("progress ", "  sample", "  check")) for line in lines), result.stderr
    return errors[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["eval", "--model", "smollm2-135m", "--data", "missing.jsonl"], "error: missing.jsonl: input file not found"),
        (["eval", "--model", "m", "--backend", "openi", "--data", "x"], "'openi' is not one of 'transformers'"),
        (["run", "--bogus"], "error: No such option: --bogus"),
        (["run", "--set", "sample.samples_per_model=0"], "error: --set sample.samples_per_model: Input should be"),
        (["run", "--set", "sampel.models=[a]"], "error: --set sampel: unknown field; did you mean 'sample'?"),
    ],
)
def test_user_errors_are_one_line(lema: Callable[..., Result], tmp_path: Path, args: list[str], expected: str) -> None:
    assert expected in one_error_line(lema(*args, cwd=tmp_path))


def test_yaml_syntax_error_keeps_brackets_and_names_file_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("run:\n  name: x\nsample:\n  models: [unclosed\n")
    line = one_error_line(lema_process("run", "--config", str(config), cwd=tmp_path))
    assert line.startswith(f"error: {config}:5:1: invalid YAML: expected ',' or ']'")


def test_unknown_model_fails_before_the_run_starts(lema: Callable[..., Result], tmp_path: Path) -> None:
    result = lema(
        "run", "--set", "llms.smollm2.model=no-such-model", "--set", f"input.path={DEMO}",
        "--set", f"store.root={tmp_path / 'store'}", cwd=tmp_path,
    )  # fmt: skip
    assert "model 'no-such-model': not the built-in alias" in one_error_line(result)
    assert not (tmp_path / "store" / "lema" / "config.yaml").exists()


def test_unreachable_server_is_reported_before_the_run(lema: Callable[..., Result], tmp_path: Path) -> None:
    from lema.runtime.infra import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    result = lema(
        "run", "--set", "llms.smollm2.backend=openai", "--set", f"llms.smollm2.base_url={url}",
        "--set", f"input.path={DEMO}", "--set", f"store.root={tmp_path / 'store'}", cwd=tmp_path,
    )  # fmt: skip
    assert f"no server answers at {url}" in one_error_line(result)


def test_gsm8k_answer_without_marker_fails_before_any_llm(lema: Callable[..., Result], tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text('{"question": "What is 2+2?", "answer": "2+2 is four"}\n')
    result = lema("run", "--set", f"input.path={data}", "--set", "llms.smollm2.model=never-loaded", cwd=tmp_path)
    assert f"error: {data}:1: field 'answer'" in one_error_line(result)


def test_debug_raises_the_error_itself_anywhere_on_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=r"missing\.jsonl: input file not found"):
        main(["eval", "--model", "m", "--data", "missing.jsonl", "--debug"])
