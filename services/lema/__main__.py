"""The `lema` command (also `python -m lema`): starts what the command needs most before its libraries load."""

from __future__ import annotations

import sys


def main() -> None:
    from lema.checker import prestart  # light: neither sympy nor typer

    prestart.start_for(sys.argv[1:])
    from lema.cli import main as run_command_line

    run_command_line()


if __name__ == "__main__":
    main()
