"""`lema serve-llm`: one configured LLM behind an OpenAI-compatible HTTP endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve_llm(
    config: Annotated[Path | None, typer.Option(help="Settings YAML; defaults apply when omitted.")] = None,
    llm: Annotated[str, typer.Option(help="Which entry of the settings' `llms` table to serve.")] = "smollm2",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve one LLM at /v1/chat/completions, /v1/models and /health (OpenAI-compatible)."""
    from lema.config import ConfigError, LemaSettings, load_settings
    from lema.llm.factory import create_backend
    from lema.llm.openai_server import serve

    try:
        settings = load_settings(config, settings_cls=LemaSettings)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from exc
    if llm not in settings.llms:
        raise typer.BadParameter(f"no LLM {llm!r}; the settings define {sorted(settings.llms)}", param_hint="--llm")
    llm_settings = settings.llms[llm]
    backend = create_backend(llm_settings)
    try:
        serve(backend, host, port)
    finally:
        backend.close()
