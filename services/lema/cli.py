"""`lema` command line. Each area registers its commands here; heavy imports stay inside the commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="lema: learning from mistakes.")

# --- command registrations (one line per area; keep module-level imports light) ---


def main() -> None:
    app()


if __name__ == "__main__":
    main()
