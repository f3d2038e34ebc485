"""Platform overhead, measured in one run on this machine (a local Tansu broker; nothing else needed).

1. gRPC `CheckerService.Check` latency, p50 and p99, at concurrency 1 and 64: a `lema serve checker` process and an
   asyncio client with that many calls in flight.
2. Per-stage Kafka throughput (messages/s) in steady state as a ratio to calling the same stage directly, for each
   Kafka client (`bus.client`) in turn, with the CPU time per message of each side, and the CPU time per message of
   the bus alone (the same messages consumed, produced back and committed with no decoding and no stage), and the
   wire format's CPU time per message (decoding each input into its record, encoding the stage's results). No stage
   runs over Kafka for less than its direct cost plus the bus and the wire format: `bound` is the ratio that sum
   allows, the most any scheduling of the same work could reach (the bus counted in its own thread, the part that
   holds the GIL; librdkafka's own threads run beside it). It is measured too, so a round whose load moved between
   its measurements can read above it. The LLM stages use the replay backend, so the ratio measures the broker,
   serialisation and commits, not an LLM; over Kafka the evolver keeps its state on the broker, as `lema serve` runs
   it. The recording they replay is made first by journaling a template backend that writes well-formed completions
   (solutions, corrections, new questions) whose numbers vary with each request's seed.

    python benchmarks/bench_platform.py [--messages 4000] [--batch-size 64] [--calls 2000] [--clients librdkafka]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, get_args

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lema.bus.base import Message, Topics
from lema.bus.kafka import RawMessage, ensure_topics, kafka_bus, kafka_inbox
from lema.config import BusSettings, LemaSettings, LLMSettings
from lema.inputs import load_questions
from lema.llm.base import Completion, GenerationRequest, TokenUsage
from lema.llm.journal import JournaledBackend
from lema.pipeline import Resources, batches_in_flight, build_worker
from lema.records import Question, Record
from lema.runtime.infra import LocalBroker, free_port
from lema.runtime.kafka_worker import KafkaWorker
from lema.runtime.serve import freeze_startup_objects
from lema.runtime.wire import decode, encode
from lema.v1 import checker_pb2, checker_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
BUS_CLIENTS = get_args(BusSettings.model_fields["client"].annotation)
TRAIN = REPO / "examples" / "data" / "gsm8k_train.jsonl"


PLACES = ("A school", "A museum", "The old hotel", "A farm house", "Our library", "The castle", "A ship")
THINGS = ("chairs", "paintings", "lamps", "cats", "plants", "clocks", "boxes", "windows", "rugs", "beds", "toys")


class TemplateBackend:
    """Writes the recording only: a solution/correction/new question per request, numbers drawn from its seed."""

    model = "template"

    def __init__(self) -> None:
        self.usage = TokenUsage()

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return [[self._complete(r, i) for i in range(r.n)] for r in requests]

    def _complete(self, request: GenerationRequest, sample: int) -> Completion:
        system = request.messages[0].content
        n = (request.params.seed + sample) % 97
        if "New problem" in system:
            place, thing = PLACES[n % len(PLACES)], THINGS[n // len(PLACES) % len(THINGS)]
            text = f"New problem: {place} has {n + 3} rooms with {n % 9 + 2} {thing} in each room. How many {thing}?"
        elif "Incorrect Step" in system:
            text = (
                "Incorrect Step: Step 1\nExplanation: The product is wrong.\n"
                f"Correct Solution:\nStep 1: {n} * 2 = {2 * n}.\nThe answer is {2 * n}"
            )
        else:
            text = f"Step 1: Multiply {n} by 2 to get {2 * n}.\nStep 2: Nothing else is needed.\nThe answer is {2 * n}"
        return Completion(text=text, prompt_tokens=120, completion_tokens=40)

    def close(self) -> None:
        pass


def settings_for(recording: Path) -> LemaSettings:
    replay = LLMSettings(backend="replay", model="template", recording=recording)
    return LemaSettings.model_validate(
        {
            "llms": {"bench": replay.model_dump()},
            "sample": {"models": ["bench"], "samples_per_model": 2},
            "correct": {"model": "bench"},
            "evolve": {"model": "bench", "rounds": 1, "questions_per_seed": 1, "votes": 3},
        }
    )


STAGES = [  # stage, worker, input topic, topic its benchmark inputs are taken from
    ("sample", "sampler", Topics.QUESTIONS, Topics.QUESTIONS),
    ("check", "checker", Topics.PATHS, Topics.PATHS),
    ("correct", "corrector", Topics.MISTAKES, Topics.MISTAKES),
    ("verify", "checker", Topics.CORRECTIONS, Topics.CORRECTIONS),
    # Every correction as a seed, verified or not: the template's corrections rarely match gold.
    ("evolve", "evolver", Topics.VERIFIED, Topics.CORRECTIONS),
]


def distinct_questions(count: int) -> list[Record]:
    """`count` distinct questions: the repository's GSM8K training sample (300), repeated with a set number."""
    sample = load_questions(TRAIN, "gsm8k")
    copies = range(-(-count // len(sample)))
    return [
        Question.create(f"{q.text} (set {copy + 1})" if copy else q.text, q.gold, q.task, q.source)
        for copy in copies
        for q in sample
    ][:count]


def stage_inputs(messages: int, recording: Path) -> dict[str, list[Record]]:
    """Every stage's input records, made by running the flow once directly while journaling the recording."""
    settings = settings_for(recording)
    template = JournaledBackend(TemplateBackend(), recording)
    resources = Resources(settings, backend_factory=lambda name, _: template)
    questions = distinct_questions(messages // 2)
    flowed: dict[str, list[Record]] = {Topics.QUESTIONS: questions}
    stage_records: dict[str, list[Record]] = {}
    for stage, worker_name, topic, source in STAGES:
        worker = build_worker(worker_name, settings, resources)
        stage_records[stage] = flowed[source][:messages]
        for output in worker.process(topic, stage_records[stage]):
            flowed.setdefault(output.topic, []).append(output.record)
    resources.close()
    return stage_records


def warmed(settings: LemaSettings) -> Resources:
    """Resources with the replay backend loaded and the checker's workers started, so no run pays for them."""
    resources = Resources(settings)
    resources.llm("bench")
    _ = resources.checker
    return resources


class Rate(NamedTuple):
    """Steady-state throughput and this process's CPU time (every thread; not the broker's) per message."""

    per_s: float
    cpu_us: float


class WireCost(NamedTuple):
    """CPU microseconds per input message of the work only a worker over Kafka does on the wire format."""

    decode_us: float
    encode_us: float
    """The stage's results, per input message."""


def direct(
    worker_name: str, topic: str, records: list[Record], settings: LemaSettings, batch: int
) -> tuple[Rate, WireCost]:
    """The stage called in batches of `batch`, the first batch a warm-up left out of the clock; and, timed apart in
    the same loop, what a worker over Kafka adds: decoding each batch's messages and encoding its results."""
    values = [encode(record) for record in records]
    resources = warmed(settings)
    worker = build_worker(worker_name, settings, resources)
    freeze_startup_objects()  # as `lema serve` does, so that both sides are measured alike
    worker.process(topic, records[:batch])
    wall = cpu = decoding = encoding = 0.0
    for i in range(batch, len(records), batch):
        decode_started = time.process_time()
        inputs = [decode(value) for value in values[i : i + batch]]
        wall_started, cpu_started = time.perf_counter(), time.process_time()
        results = worker.process(topic, inputs)
        wall_ended, cpu_ended = time.perf_counter(), time.process_time()
        for message in results:
            encode(message.record)
        decoding += cpu_started - decode_started
        wall += wall_ended - wall_started
        cpu += cpu_ended - cpu_started
        encoding += time.process_time() - cpu_ended
    resources.close()
    measured = len(records) - batch
    return Rate(measured / wall, cpu / measured * 1e6), WireCost(decoding / measured * 1e6, encoding / measured * 1e6)


def through_kafka(
    worker_name: str, topic: str, records: list[Record], settings: LemaSettings, bus: BusSettings
) -> Rate:
    """Steady state: the clock starts once the group has joined and the first batch is done; the worker runs with
    the window and resources `lema serve` gives it (the evolver keeps its state on the broker)."""
    ensure_topics(bus, Topics.ALL, partitions=4, replication_factor=1)
    producer = kafka_bus(bus, client_id="bench-feed")
    producer.publish([Message(topic, r.key, r) for r in records])  # type: ignore[attr-defined]
    producer.close()
    settings = settings.model_copy(update={"bus": bus})
    resources = warmed(settings)
    depth = batches_in_flight(worker_name, settings, bus.batch_size)
    worker = build_worker(worker_name, settings, resources)
    freeze_startup_objects()  # as `lema serve` does once its resources are loaded
    kafka = KafkaWorker(worker, bus, client_id=f"bench-{worker_name}", batches_in_flight=depth)
    first = 0
    while first == 0:
        first = kafka.step(0.2)
    consumed, wall, cpu = first, time.perf_counter(), time.process_time()
    while consumed < len(records):
        consumed += kafka.step(0.2)
    kafka.finish()  # the last batches' acknowledgements and commits
    measured = len(records) - first
    rate = Rate(measured / (time.perf_counter() - wall), (time.process_time() - cpu) / measured * 1e6)
    kafka.close()
    resources.close()
    return rate


class Floor(NamedTuple):
    """CPU microseconds per message of the bus alone."""

    own_us: float
    """In the thread that consumes, produces and commits: the part that holds the GIL."""
    process_us: float
    """With the client's own background threads (librdkafka's), which run beside it."""


def client_floor(records: list[Record], bus: BusSettings) -> Floor:
    """What the bus alone costs: the same messages consumed, produced back unchanged (no decoding, no stage) and
    committed, in polls of `bus.batch_size`. No stage can run faster over Kafka."""
    ensure_topics(bus, ["floor.in", "floor.out"], partitions=4, replication_factor=1)
    producer = kafka_bus(bus, client_id="bench-floor")
    producer.publish([Message("floor.in", r.key, r) for r in records])  # type: ignore[attr-defined]
    inbox = kafka_inbox(bus, bus.group_prefix + "floor", ["floor.in"], client_id="bench-floor")
    consumed = len(inbox.poll(5))
    own, cpu = time.thread_time(), time.process_time()
    measured = 0
    while consumed < len(records):
        deliveries = inbox.poll(0.5)
        producer.publish_raw([RawMessage("floor.out", d.key, d.value, d.headers) for d in deliveries])
        inbox.commit(deliveries)
        consumed += len(deliveries)
        measured += len(deliveries)
    per_message = 1e6 / max(measured, 1)
    floor = Floor((time.thread_time() - own) * per_message, (time.process_time() - cpu) * per_message)
    inbox.close()
    producer.close()
    return floor


def kafka_table(
    broker: LocalBroker, messages: int, batch: int, clients: Sequence[str] = BUS_CLIENTS, rounds: int = 1
) -> None:
    """Each stage over each client in turn, the direct baseline measured right after each run (the load of this
    machine changes by the minute: a ratio compares two neighbouring measurements); with `rounds` > 1 the median
    of that many ratios, with their range. `bound`, the median over the rounds, is the direct CPU time over the sum
    of it, the round's decoding and encoding and the bus's floor in its own thread: the costs that hold the GIL one
    after the other."""
    with tempfile.TemporaryDirectory() as tmp:
        recording = Path(tmp) / "recording.jsonl"
        inputs = stage_inputs(messages, recording)
        settings = settings_for(recording)
        floors = {
            client: client_floor(inputs["check"], bench_bus(broker, f"floor{client[:5]}", batch, client))
            for client in clients
        }
        print(
            f"\nKafka stage throughput ({batch} messages per batch, replayed LLM, steady state after one batch,"
            f" median of {rounds} round(s))"
        )
        print(
            f"{'stage':<8} {'client':<12} {'messages':>8} {'direct msg/s':>13} {'kafka msg/s':>12} {'ratio':>6}"
            f" {'range':>10} {'direct CPU us/msg':>18} {'kafka CPU us/msg':>17} {'decode+encode us':>17} {'bound':>6}"
        )
        for index, (stage, worker_name, topic, _) in enumerate(STAGES):
            records = inputs[stage]
            for client in clients:
                runs: list[tuple[Rate, Rate, WireCost]] = []
                for round_ in range(rounds):
                    bus = bench_bus(broker, f"bench{index}{client[:5]}r{round_}", batch, client)
                    kafka = through_kafka(worker_name, topic, records, settings, bus)
                    runs.append((kafka, *direct(worker_name, topic, records, settings, batch)))
                runs.sort(key=lambda run: run[0].per_s / run[1].per_s)
                ratios = [kafka.per_s / baseline.per_s for kafka, baseline, _ in runs]
                bounds = sorted(
                    baseline.cpu_us / (baseline.cpu_us + wire.decode_us + wire.encode_us + floors[client].own_us)
                    for _, baseline, wire in runs
                )
                via_kafka, baseline, wire = runs[len(runs) // 2]  # the median round's numbers
                print(
                    f"{stage:<8} {client:<12} {len(records):>8} {baseline.per_s:>13.0f} {via_kafka.per_s:>12.0f}"
                    f" {statistics.median(ratios):>6.2f} {f'{ratios[0]:.2f}-{ratios[-1]:.2f}':>10}"
                    f" {baseline.cpu_us:>18.1f} {via_kafka.cpu_us:>17.1f}"
                    f" {f'{wire.decode_us:.1f}+{wire.encode_us:.1f}':>17} {statistics.median(bounds):>6.2f}"
                )
        for client, floor in floors.items():
            print(
                f"the bus alone ({client}; consume, produce unchanged, commit; no decoding): {floor.own_us:.1f} CPU"
                f" us/msg in its thread, {floor.process_us:.1f} with the client's own threads"
            )


def bench_bus(broker: LocalBroker, namespace: str, batch: int, client: str) -> BusSettings:
    return BusSettings.model_validate(
        {
            "kind": "kafka",
            "client": client,
            "bootstrap_servers": broker.bootstrap_servers,
            "topic_prefix": f"{namespace}.",
            "group_prefix": f"{namespace}-",
            "batch_size": batch,
            "max_poll_interval_ms": 6000,
            "session_timeout_ms": 6000,
        }
    )


async def _latencies(target: str, concurrency: int, calls: int) -> list[float]:
    request = checker_pb2.CheckRequest(response="Step 1: 6 * 3 = 18.\nThe answer is 18", gold="18", task="gsm8k")
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = checker_pb2_grpc.CheckerServiceStub(channel)
        for _ in range(50):  # warm-up
            await stub.Check(request)

        async def caller(count: int) -> None:
            for _ in range(count):
                start = time.perf_counter()
                await stub.Check(request, timeout=30)
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
    return latencies


def grpc_table(calls: int) -> None:
    port = free_port()
    command = [sys.executable, "-m", "lema.cli", "serve", "checker", "--set", f"server.grpc_port={port}"]
    command += ["--set", f"server.metrics_port={free_port()}", "--set", "server.host=127.0.0.1"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ)
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    break
                except grpc.RpcError:
                    time.sleep(0.2)
        print(f"\ngRPC CheckerService.Check latency ({calls} calls per row, `lema serve checker` in its own process)")
        print(f"{'concurrency':>11} {'p50 ms':>8} {'p99 ms':>8} {'calls/s':>8}")
        for concurrency in (1, 64):
            start = time.perf_counter()
            latencies = sorted(asyncio.run(_latencies(target, concurrency, calls)))
            rate = len(latencies) / (time.perf_counter() - start)
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(0.99 * (len(latencies) - 1))] * 1000
            print(f"{concurrency:>11} {p50:>8.2f} {p99:>8.2f} {rate:>8.0f}")
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000, help="input messages per stage (>= 2000 measured)")
    parser.add_argument("--batch-size", type=int, default=64, help="messages per Kafka batch and per direct call")
    parser.add_argument("--calls", type=int, default=2000, help="gRPC calls per concurrency level")
    parser.add_argument("--clients", default=",".join(BUS_CLIENTS), help="Kafka clients (bus.client) to measure")
    parser.add_argument("--rounds", type=int, default=1, help="Kafka runs per stage and client (median ratio)")
    args = parser.parse_args()
    grpc_table(args.calls)
    with LocalBroker() as broker:
        kafka_table(broker, args.messages, args.batch_size, args.clients.split(","), args.rounds)


if __name__ == "__main__":
    main()
