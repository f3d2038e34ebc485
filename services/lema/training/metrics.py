"""Training progress as Prometheus metrics: scraped from `/metrics`, or pushed to a Pushgateway at every log.

A training pod may finish between two scrapes, and a Job's pods are not always scrape targets; the Pushgateway keeps
the last values for Prometheus to collect. Only rank 0 reports: its loss is already averaged across ranks and its
token count summed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, push_to_gateway, start_http_server
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from lema.training.config import MetricsSettings

log = logging.getLogger(__name__)


class TrainingMetrics(TrainerCallback):
    def __init__(self, settings: MetricsSettings, run_name: str) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.grouping_key = {"run": run_name}
        self.loss = Gauge("lema_train_loss", "Training loss averaged since the last log.", registry=self.registry)
        self.learning_rate = Gauge("lema_train_learning_rate", "Current learning rate.", registry=self.registry)
        self.tokens_per_second = Gauge(
            "lema_train_tokens_per_second", "Non-padding tokens trained per second since the last log, all ranks.",
            registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter("lema_train_tokens", "Non-padding tokens trained, all ranks.", registry=self.registry)
        self.step = Gauge("lema_train_step", "Optimizer steps completed.", registry=self.registry)
        self.epoch = Gauge("lema_train_epoch", "Epochs completed (fractional).", registry=self.registry)
        self.gpu_memory = Gauge(
            "lema_train_gpu_memory_bytes", "Peak GPU memory allocated by this process.", registry=self.registry
        )
        self._last: tuple[float, int] | None = None
        self._server: Any = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **_: Any) -> None:
        if state.is_world_process_zero and self.settings.port is not None:
            try:
                self._server = start_http_server(self.settings.port, registry=self.registry)[0]
                log.info("serving training metrics on :%d/metrics", self.settings.port)
            except OSError as exc:
                # Metrics are worth a warning, never a lost training run.
                log.warning("metrics.port %d: cannot serve /metrics (%s); training goes on", self.settings.port, exc)
        self._last = (time.perf_counter(), state.num_input_tokens_seen)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **_: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        if self._last is not None and tokens > self._last[1]:
            self.tokens.inc(tokens - self._last[1])
            self.tokens_per_second.set((tokens - self._last[1]) / max(now - self._last[0], 1e-9))
        self._last = (now, tokens)
        if "loss" in logs:
            self.loss.set(logs["loss"])
        if "learning_rate" in logs:
            self.learning_rate.set(logs["learning_rate"])
        self.step.set(state.global_step)
        self.epoch.set(state.epoch or 0.0)
        if torch.cuda.is_available():
            self.gpu_memory.set(torch.cuda.max_memory_allocated())
        self.push()

    def close(self) -> None:
        """Push the final values and stop serving."""
        self.push()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def push(self) -> None:
        """Send every metric to the Pushgateway, if one is configured; a failed push is logged, never fatal."""
        if self.settings.pushgateway is None:
            return
        try:
            push_to_gateway(
                self.settings.pushgateway, job=self.settings.job, registry=self.registry, grouping_key=self.grouping_key
            )
        except OSError as exc:
            log.warning("push to %s failed: %s", self.settings.pushgateway, exc)
