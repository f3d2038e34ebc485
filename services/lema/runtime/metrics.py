"""Prometheus metrics shared by every lema service, and the `/metrics` HTTP endpoint that exports them.

Names follow Prometheus conventions: base units (seconds), `_total` counters, and labels with a handful of values
each (service, method, code, stage, topic, verdict, model) — never record ids.
"""

from __future__ import annotations

from collections import Counter as TallyCounter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from lema.bus.base import Message, Topics
from lema.llm.base import LLMBackend
from lema.records import Attempt, CorrectedAttempt, Drop
from lema.stages.verify import STAGE as VERIFY_STAGE

RPC_REQUESTS = Counter(
    "lema_rpc_requests_total",
    "gRPC requests handled, by service, method and status code.",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "lema_rpc_duration_seconds",
    "Time to handle a gRPC request (for server-streaming calls, until the last message).",
    ["service", "method", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
STAGE_RECORDS_IN = Counter("lema_stage_records_in_total", "Records a stage consumed.", ["stage", "topic"])
STAGE_RECORDS_OUT = Counter("lema_stage_records_out_total", "Records a stage produced.", ["stage", "topic"])
STAGE_BATCH_DURATION = Histogram(
    "lema_stage_batch_duration_seconds",
    "Time a stage spent processing one batch.",
    ["stage"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300),
)
CHECKER_VERDICTS = Counter("lema_checker_verdicts_total", "Answers checked against gold, by verdict.", ["verdict"])
CORRECTIONS = Counter(
    "lema_corrections_total",
    "Corrections by outcome: 'verified' (answer equals gold) or 'rejected'. Yield = verified / all.",
    ["outcome"],
)
DROPS = Counter("lema_drops_total", "Records a stage discarded, by stage and reason.", ["stage", "reason"])
KAFKA_CONSUMER_LAG = Gauge(
    "lema_kafka_consumer_lag_messages", "Messages not yet consumed by this replica's partitions.", ["group", "topic"]
)
DEAD_LETTERS = Counter(
    "lema_dead_letters_total", "Messages sent to the dead-letter topic, by source topic.", ["group", "topic"]
)


def observe_outputs(messages: Iterable[Message]) -> None:
    """Count what a stage produced: verdicts, correction outcomes and drops are read off the records themselves
    (tallied first, so each label is incremented once per batch)."""
    verdicts: TallyCounter[str] = TallyCounter()
    outcomes: TallyCounter[str] = TallyCounter()
    drops: TallyCounter[tuple[str, str]] = TallyCounter()
    for message in messages:
        record = message.record
        if isinstance(record, Attempt) and record.path.verdict is not None:
            verdicts[record.path.verdict] += 1
        elif isinstance(record, CorrectedAttempt) and message.topic == Topics.VERIFIED:
            outcomes["verified"] += 1
        elif isinstance(record, Drop):
            drops[record.stage, record.reason] += 1
            if record.stage == VERIFY_STAGE:
                outcomes["rejected"] += 1
    for verdict, count in verdicts.items():
        CHECKER_VERDICTS.labels(verdict).inc(count)
    for outcome, count in outcomes.items():
        CORRECTIONS.labels(outcome).inc(count)
    for (stage, reason), count in drops.items():
        DROPS.labels(stage, reason).inc(count)


class LLMUsageCollector(Collector):
    """Exports the running token and latency totals every backend keeps, read at scrape time."""

    def __init__(self, backends: Callable[[], Mapping[str, LLMBackend]]) -> None:
        self._backends = backends

    def collect(self) -> Iterator[Metric]:
        prompt = CounterMetricFamily("lema_llm_prompt_tokens", "Prompt tokens sent to the LLM.", labels=["model"])
        generated = CounterMetricFamily("lema_llm_generated_tokens", "Tokens the LLM generated.", labels=["model"])
        latency = SummaryMetricFamily(
            "lema_llm_request_duration_seconds", "Time the LLM took per batched request.", labels=["model"]
        )
        for backend in self._backends().values():
            usage = backend.usage
            prompt.add_metric([backend.model], usage.prompt_tokens)
            generated.add_metric([backend.model], usage.completion_tokens)
            latency.add_metric([backend.model], count_value=usage.requests, sum_value=usage.seconds)
        yield from (prompt, generated, latency)

    def describe(self) -> Iterable[Any]:
        return []


def serve_metrics(host: str, port: int, backends: Callable[[], Mapping[str, LLMBackend]]) -> int:
    """Register the LLM usage collector and serve `/metrics` from a daemon thread; returns the bound port."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series: noise no dashboard reads
    REGISTRY.register(LLMUsageCollector(backends))
    httpd, _ = start_http_server(port, addr=host)
    return int(httpd.server_port)
