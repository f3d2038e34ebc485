"""A stranger's first hour: clone the repository into an empty directory and run the README's commands as written.

The commands come from the README's "Your first hour" section itself, so the README cannot drift from what works.
Installing (step 1) is the one step not repeated: the clone borrows this checkout's installed `.venv`, and imports
the clone's own `services/` (what a fresh `make venv` would install). The one change to the text is the port of the
`serve-llm` example, swapped for a free one so a busy port 8000 cannot fail the check.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from lema.runtime.infra import free_port

REPO = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"<!-- section:first-hour -->(.*?)<!-- /section:first-hour -->", re.DOTALL)
BLOCK = re.compile(r"```bash\n(.*?)```", re.DOTALL)
INSTALL = ("git clone", "make venv")

# About 2 minutes on 2 free cores; the limit leaves room for a machine shared with other jobs.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def first_hour_commands() -> str:
    """The bash of the section's code blocks after the install step, dedented, line continuations kept."""
    match = SECTION.search((REPO / "README.md").read_text())
    assert match, "README.md has no first-hour section"
    lines = []
    for block in BLOCK.findall(match.group(1)):
        for line in block.splitlines():
            command = line.strip()
            if command and not command.startswith(INSTALL):
                lines.append(command)
    return "\n".join(lines) + "\n"


def test_readme_first_hour_commands_run_in_a_fresh_clone(tmp_path: Path) -> None:
    commands = first_hour_commands()
    assert "lema run --config examples/quickstart.yaml" in commands and "serve-llm" in commands
    clone = tmp_path / "lema"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=120)
    assert not (tmp_path / "shared").exists()
    (clone / ".venv").symlink_to((REPO / ".venv").resolve())
    port = str(free_port())
    script = commands.replace(":8000", f":{port}").replace("--port 8000", f"--port {port}")
    env = {**os.environ, "PYTHONPATH": str(clone / "services")}
    # Its own process group, so that a failure before `kill %1` cannot leave the LLM server running.
    shell = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = shell.communicate(timeout=1500)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(timeout=60)
    assert shell.returncode == 0, f"{script}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
    for run in ("quickstart", "mine"):
        summary = json.loads((clone / "runs" / run / "run_summary.json").read_text())
        assert summary["questions"]["input"] == 2 and summary["stages"]["sample"]["paths"] == 2, run
        assert summary["dataset"]["cot_gold"] == 2, run
    served = json.loads((clone / "runs" / "mine" / "run_summary.json").read_text())["llms"]["smollm2"]
    assert served["requests"] > 0 and served["completion_tokens"] > 0
