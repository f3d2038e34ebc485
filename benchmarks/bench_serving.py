"""Serving speed, measured in one run, each result as a ratio to a baseline measured beside it.

1. gRPC `CheckerService.Check`: calls/s and p50/p99 at concurrency 1 and 64 against the checker's gRPC server (as
   `lema serve checker` runs it), and the same client against a minimal `grpc.aio` echo service (the ceiling of
   Python gRPC on this machine), both in one process, in rounds that alternate the two so that load from elsewhere
   hits both alike. Targets: calls/s at c=64 >= 0.8x the echo's; p99 <= 2x the echo's.
2. gRPC `CorrectorService.Correct` on SmolLM2 (transformers backend, short max_tokens): calls/s at concurrency 16
   (three full batches a round) as a ratio to concurrency 1, rounds interleaved; concurrent calls share the model's
   batches. Target >= 4x.
3. Each stage's Kafka throughput as a ratio to calling the stage directly (`bench_platform.py`'s table), beside the
   `bound` that the per-message work over Kafka (the bus alone, decoding and encoding) puts on that ratio.
   Targets: check and verify >= 0.5x; sample, correct, evolve >= 0.9x.
4. The LLM stages through the `openai` backend against `lema serve-llm` (SmolLM2, batching), rounds interleaved:
   the sample stage's tokens/s as a ratio to a raw asyncio HTTP client sending the same requests at the same
   concurrency (target >= 0.97x); and sample, correct and evolve over Kafka, as `lema serve` runs them, as a ratio
   to calling each directly: section 3's ratios with a real LLM instead of a replayed one (target >= 0.9x).

    python benchmarks/bench_serving.py [--skip grpc,correct,kafka,llm] [--messages 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import httpx
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench_platform import bench_bus, kafka_table, stage_inputs
from lema.bus.base import Message, Topics
from lema.bus.kafka import ensure_topics, kafka_bus
from lema.config import BusSettings, LemaSettings
from lema.llm.base import Completion, GenerationRequest, TokenUsage
from lema.pipeline import Resources, SamplerWorker, batches_in_flight, build_worker, process_windowed
from lema.records import Question, Record
from lema.runtime.grpc_server import GrpcServer
from lema.runtime.infra import LocalBroker, free_port
from lema.runtime.kafka_worker import KafkaWorker
from lema.runtime.services import service_bindings
from lema.runtime.settings import ServiceSettings
from lema.v1 import checker_pb2, corrector_pb2, corrector_pb2_grpc

ECHO_METHOD = "/bench.Echo/Check"
CHECK_REQUEST = checker_pb2.CheckRequest(response="Step 1: 6 * 3 = 18.\nThe answer is 18", gold="18", task="gsm8k")


# -- processes ------------------------------------------------------------------------------------------------
@contextmanager
def process(command: list[str], ready: Callable[[], bool], what: str, log: Path) -> Iterator[None]:
    """Run `command` until the block ends; `ready` is polled (at most 5 minutes) before the block starts."""
    with log.open("wb") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=os.environ)
    try:
        deadline = time.monotonic() + 300
        while not ready():
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield
    finally:
        child.terminate()
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def grpc_healthy(target: str) -> Callable[[], bool]:
    def check() -> bool:
        with grpc.insecure_channel(target) as channel:
            try:
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                return True
            except grpc.RpcError:
                return False

    return check


def http_healthy(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def lema(*args: str) -> list[str]:
    return [sys.executable, "-m", "lema.cli", *args]


def serve_args(service: str, grpc_port: int, config: Path | None = None) -> list[str]:
    args = ["serve", service] + (["--config", str(config)] if config else [])
    for setting in (f"server.grpc_port={grpc_port}", f"server.metrics_port={free_port()}", "server.host=127.0.0.1"):
        args += ["--set", setting]
    return lema(*args)


# -- the echo ceiling -----------------------------------------------------------------------------------------
async def serve_echo(port: int) -> None:
    """A grpc.aio server answering one unary method with a fixed CheckResponse, plus health (for readiness)."""
    from grpc_health.v1 import health

    answer = checker_pb2.CheckResponse(correct=True, predicted="18", reason="echo")

    async def echo(request: checker_pb2.CheckRequest, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                echo, checker_pb2.CheckRequest.FromString, checker_pb2.CheckResponse.SerializeToString
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- a closed-loop client -------------------------------------------------------------------------------------
async def closed_loop(call: Callable[[int], Awaitable[Any]], concurrency: int, calls: int) -> tuple[float, list[float]]:
    """Run `calls` calls with `concurrency` in flight; (calls/s, sorted latencies in seconds)."""
    latencies: list[float] = []
    next_call = 0

    async def caller() -> None:
        nonlocal next_call
        while next_call < calls:
            index, next_call = next_call, next_call + 1
            start = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return calls / (time.perf_counter() - start), sorted(latencies)


def percentile(latencies: Sequence[float], fraction: float) -> float:
    return latencies[int(fraction * (len(latencies) - 1))] * 1000


async def check_rates(
    targets: dict[str, tuple[str, str]], calls: int, rounds: int
) -> dict[str, dict[int, tuple[float, float, float]]]:
    """{server: {concurrency: (calls/s, p50 ms, p99 ms)}} for unary CheckRequest -> CheckResponse calls, `targets`
    naming each server's (address, method). Each concurrency runs in `rounds` rounds that call every server in turn,
    the order flipped every round, so load from elsewhere on the machine hits every server alike."""
    per_round = max(1, calls // rounds)
    rates: dict[str, dict[int, tuple[float, float, float]]] = {name: {} for name in targets}
    async with contextlib.AsyncExitStack() as stack:
        stubs = {}
        for name, (target, method) in targets.items():
            channel = await stack.enter_async_context(grpc.aio.insecure_channel(target))
            call = channel.unary_unary(
                method,
                request_serializer=checker_pb2.CheckRequest.SerializeToString,
                response_deserializer=checker_pb2.CheckResponse.FromString,
            )
            stubs[name] = functools.partial(call, CHECK_REQUEST, timeout=30)
            await closed_loop(lambda _, call=stubs[name]: call(), 8, 200)  # warm-up
        for concurrency in (1, 64):
            seconds = dict.fromkeys(targets, 0.0)
            latencies: dict[str, list[float]] = {name: [] for name in targets}
            for round_ in range(rounds):
                for name in list(targets)[:: 1 if round_ % 2 == 0 else -1]:
                    rate, measured = await closed_loop(lambda _, call=stubs[name]: call(), concurrency, per_round)
                    seconds[name] += per_round / rate
                    latencies[name] += measured
            for name, measured in latencies.items():
                measured.sort()
                rate = len(measured) / seconds[name]
                rates[name][concurrency] = (rate, statistics.median(measured) * 1000, percentile(measured, 0.99))
    return rates


def serve_pair(echo_port: int, check_port: int) -> None:
    """The checker's gRPC server, built as `lema serve checker` builds it (on its own event-loop thread), and the
    echo service (on the main thread), in one process: the scheduler then places both alike. As two processes at this
    load, two identical echo services measured up to 30% apart; in one process, within 10%."""
    settings = ServiceSettings.model_validate(
        {"server": {"host": "127.0.0.1", "grpc_port": check_port, "metrics_port": 0, "drain_delay_s": 0}}
    )
    resources = Resources(settings)
    _ = resources.checker  # loaded before SERVING, as `lema serve` does
    GrpcServer(settings.server, service_bindings("checker", settings, resources)).start()
    asyncio.run(serve_echo(echo_port))


def grpc_check(calls: int, rounds: int, logs: Path) -> None:
    echo_port, check_port = free_port(), free_port()
    servers = [sys.executable, __file__, "--pair-ports", str(echo_port), str(check_port)]
    echo_target, check_target = f"127.0.0.1:{echo_port}", f"127.0.0.1:{check_port}"

    def ready() -> bool:
        return grpc_healthy(echo_target)() and grpc_healthy(check_target)()

    with process(servers, ready, "the echo and checker servers", logs / "servers.log"):
        targets = {"echo": (echo_target, ECHO_METHOD), "checker": (check_target, "/lema.v1.CheckerService/Check")}
        rates = asyncio.run(check_rates(targets, calls, rounds))
    print(
        f"\n1. gRPC Check ({calls} calls per row in {rounds} rounds alternating echo and checker; "
        "both servers in one process; one grpc.aio client in another)"
    )
    print(f"{'server':<8} {'conc':>4} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7}")
    for name, by_concurrency in rates.items():
        for concurrency, (rate, p50, p99) in by_concurrency.items():
            print(f"{name:<8} {concurrency:>4} {rate:>8.0f} {p50:>7.2f} {p99:>7.2f}")
    ceiling, measured = rates["echo"], rates["checker"]
    throughput = measured[64][0] / ceiling[64][0]
    tail = measured[64][2] / ceiling[64][2]
    print(f"Check/echo at c=64: throughput {throughput:.2f}x (target >= 0.8), p99 {tail:.2f}x (target <= 2)")


# -- Correct on SmolLM2 -----------------------------------------------------------------------------------------
def correct_request(index: int) -> corrector_pb2.CorrectRequest:
    a, b = 3 + index, 7 + 2 * index
    return corrector_pb2.CorrectRequest(
        question=f"A shelf holds {a} rows of {b} books. How many books are on the shelf?",
        wrong_solution=f"Step 1: {a} + {b} = {a + b}.\nThe answer is {a + b}",
        gold=str(a * b),
        task="gsm8k",
    )


async def correct_rate(target: str, concurrency: int, calls: int, offset: int) -> float:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = corrector_pb2_grpc.CorrectorServiceStub(channel)
        rate, _ = await closed_loop(
            lambda i: stub.Correct(correct_request(offset + i), timeout=600), concurrency, calls
        )
    return rate


def correct_concurrency(max_tokens: int, calls_alone: int, rounds: int, logs: Path) -> None:
    config = logs / "corrector.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "llms": {"smollm2": {"backend": "transformers", "model": "smollm2-135m", "batch_size": 16}},
                "correct": {"show_gold": True, "params": {"max_tokens": max_tokens}},
            }
        )
    )
    port = free_port()
    target = f"127.0.0.1:{port}"
    with process(serve_args("corrector", port, config), grpc_healthy(target), "lema serve corrector", logs / "c.log"):
        asyncio.run(correct_rate(target, 16, 16, offset=10_000))  # warm-up: both batch shapes
        alone, shared = [], []
        for round_ in range(rounds):  # interleaved, so a change in the machine's load hits both sides
            alone.append(asyncio.run(correct_rate(target, 1, calls_alone, offset=1_000 * round_)))
            shared.append(asyncio.run(correct_rate(target, 16, 3 * 16, offset=1_000 * round_ + 100)))
    alone_rate, shared_rate = statistics.mean(alone), statistics.mean(shared)
    print(f"\n2. gRPC Correct on SmolLM2 (transformers, max_tokens {max_tokens}, batch 16, {rounds} rounds)")
    print(
        f"concurrency 1 ({calls_alone} calls a round): {alone_rate:.2f} calls/s; concurrency 16 (48 calls a round): "
        f"{shared_rate:.2f} calls/s; {shared_rate / alone_rate:.2f}x (target >= 4)"
    )


# -- Kafka stages -----------------------------------------------------------------------------------------------
def kafka_stages(messages: int, batch: int, rounds: int) -> None:
    print("\n3.", end="")
    with LocalBroker() as broker:
        kafka_table(broker, messages, batch, rounds=rounds)
    print("targets: check, verify >= 0.5; sample, correct, evolve >= 0.9")


# -- the LLM stages against a batching server --------------------------------------------------------------------
LLM_STAGES = [  # stage, worker, input topic
    ("sample", "sampler", Topics.QUESTIONS),
    ("correct", "corrector", Topics.MISTAKES),
    ("evolve", "evolver", Topics.VERIFIED),
]


class Capturing:
    """Records the requests the sample stage makes, answering with empty completions (to build the raw client's)."""

    model = "smollm2-135m"

    def __init__(self) -> None:
        self.usage = TokenUsage()
        self.requests: list[GenerationRequest] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self.requests += requests
        return [[Completion("", 0, 0)] for _ in requests]

    def close(self) -> None:
        pass


def llm_settings(url: str, concurrency: int, max_tokens: int) -> LemaSettings:
    """Every LLM stage on one `openai` backend against the server, in batches of 4 messages (the sample stage's are
    8 requests), so that the window across batches, not one big batch, keeps the server's slots full. Greedy
    decoding: the server's batches are not batch-invariant, so sampled texts (and the work they take) differ with
    the order requests arrive in, which differs between the runtimes; greedy texts hardly do."""
    params = {"max_tokens": max_tokens, "temperature": 0.0}
    llm = {"backend": "openai", "model": "smollm2-135m", "base_url": url, "max_concurrency": concurrency}
    return LemaSettings.model_validate(
        {
            "llms": {"smollm2": llm},
            "bus": {"batch_size": 4},
            "sample": {"models": ["smollm2"], "samples_per_model": 2, "params": params},
            "correct": {"model": "smollm2", "params": params},
            "evolve": {
                "model": "smollm2",
                "questions_per_seed": 1,
                "votes": 3,
                "params": params,
                "vote_params": params,
            },
        }
    )


def body(request: GenerationRequest) -> dict[str, Any]:
    params = request.params
    fields = {"temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens}
    messages = [{"role": m.role, "content": m.content} for m in request.messages]
    stop = {"stop": list(params.stop)} if params.stop else {}
    return {"model": "smollm2-135m", "messages": messages, "seed": params.seed, **fields, **stop}


async def raw_tokens_per_s(url: str, requests: Sequence[GenerationRequest], concurrency: int) -> float:
    tokens = 0
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency)) as client:

        async def call(index: int) -> None:
            nonlocal tokens
            response = await client.post(f"{url}/chat/completions", json=body(requests[index]))
            tokens += response.json()["usage"]["completion_tokens"]

        rate, _ = await closed_loop(call, concurrency, len(requests))
    return rate * tokens / len(requests)


class StageInput(NamedTuple):
    warmup: list[Record]
    """One batch, processed before the clock starts: connections, the group join, the producers' ids."""
    measured: list[Record]


def stage_tokens_per_s(settings: LemaSettings, worker_name: str, topic: str, records: StageInput) -> float:
    """The stage as `lema run` calls it: batches of the stage's batch size, with the window it gives the stage."""
    resources = Resources(settings)
    backend = resources.llm("smollm2")
    worker = build_worker(worker_name, settings, resources)
    worker.process(topic, records.warmup)
    size, measured = settings.bus.batch_size, records.measured
    batches = [measured[i : i + size] for i in range(0, len(measured), size)]
    tokens, start = backend.usage.completion_tokens, time.perf_counter()
    for _ in process_windowed(worker, topic, batches, batches_in_flight(worker_name, settings, size)):
        pass
    rate = (backend.usage.completion_tokens - tokens) / (time.perf_counter() - start)
    resources.close()
    return rate


def kafka_stage_tokens_per_s(
    settings: LemaSettings, worker_name: str, topic: str, records: StageInput, bus: BusSettings
) -> float:
    """The stage as `lema serve` runs it: a Kafka worker with the window `lema serve` gives it (the evolver keeps
    its state on the broker). The clock runs from when the measured records are published, after the warm-up
    batch went through, until the last batch's results are acknowledged and committed."""
    ensure_topics(bus, Topics.ALL, partitions=4, replication_factor=1)
    settings = settings.model_copy(update={"bus": bus})
    resources = Resources(settings)
    backend = resources.llm("smollm2")
    depth = batches_in_flight(worker_name, settings, bus.batch_size)
    kafka = KafkaWorker(
        build_worker(worker_name, settings, resources), bus, client_id=f"bench-{worker_name}", batches_in_flight=depth
    )
    producer = kafka_bus(bus, client_id="bench-feed")

    def publish_and_process(batch: list[Record]) -> None:
        producer.publish([Message(topic, r.key, r) for r in batch])  # type: ignore[attr-defined]
        consumed = 0
        while consumed < len(batch):
            consumed += kafka.step(0.2)
        kafka.finish()

    publish_and_process(records.warmup)
    tokens, start = backend.usage.completion_tokens, time.perf_counter()
    publish_and_process(records.measured)
    rate = (backend.usage.completion_tokens - tokens) / (time.perf_counter() - start)
    producer.close()
    kafka.close()
    resources.close()
    return rate


def llm_stages(questions_count: int, concurrency: int, max_tokens: int, rounds: int, logs: Path) -> None:
    config = logs / "serve-llm.yaml"
    config.write_text(yaml.safe_dump({"llms": {"smollm2": {"model": "smollm2-135m", "batch_size": concurrency}}}))
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    settings = llm_settings(url, concurrency, max_tokens)
    size = settings.bus.batch_size
    questions: list[Record] = [
        Question.create(f"A farm has {n} pens with {n % 7 + 2} goats in each. How many goats?", "", "gsm8k", "bench")
        for n in range(3, 3 + size + questions_count)
    ]
    capture = Capturing()
    SamplerWorker(settings, Resources(settings, backend_factory=lambda name, _: capture)).process(
        "questions", questions[size:]
    )
    # Well-formed mistakes and corrections (as seeds) from bench_platform's template flow: their texts, not their
    # completions, matter here. One correction per question: the evolver evolves a question once, so with two
    # corrections of one question in a batch the batch's size would depend on the order the messages arrive in.
    flowed = stage_inputs(4 * (size + questions_count), logs / "recording.jsonl")
    seeds = list({seed.question.id: seed for seed in flowed["evolve"]}.values())  # type: ignore[attr-defined]
    counts = {"sample": questions_count, "correct": 2 * questions_count, "evolve": questions_count}
    inputs = {
        stage: StageInput(records[:size], records[size : size + counts[stage]])
        for stage, records in (("sample", questions), ("correct", flowed["correct"]), ("evolve", seeds))
    }
    serve_llm = lema("serve-llm", "--config", str(config), "--port", str(port))
    raw_rates: list[float] = []
    rates: dict[tuple[str, str], list[float]] = {}
    with (
        LocalBroker() as broker,
        process(serve_llm, http_healthy(f"http://127.0.0.1:{port}/health"), "lema serve-llm", logs / "llm.log"),
    ):
        asyncio.run(raw_tokens_per_s(url, capture.requests[:concurrency], concurrency))  # warm-up
        for round_ in range(rounds):  # interleaved, so a change in the machine's load hits every side alike
            raw_rates.append(asyncio.run(raw_tokens_per_s(url, capture.requests, concurrency)))
            for stage, worker_name, topic in LLM_STAGES:
                direct_rate = stage_tokens_per_s(settings, worker_name, topic, inputs[stage])
                rates.setdefault((stage, "direct"), []).append(direct_rate)
                bus = bench_bus(broker, f"{stage}{round_}", settings.bus.batch_size, "librdkafka")
                kafka_rate = kafka_stage_tokens_per_s(settings, worker_name, topic, inputs[stage], bus)
                rates.setdefault((stage, "kafka"), []).append(kafka_rate)
    raw = statistics.mean(raw_rates)
    sample = statistics.mean(rates["sample", "direct"])
    print(f"\n4. Sample stage vs a raw client, `lema serve-llm` SmolLM2 batching up to {concurrency} requests")
    print(f"{len(capture.requests)} requests a round, {rounds} rounds, max_tokens {max_tokens}, window {concurrency}")
    print(f"raw client {raw:.1f} tokens/s; sample stage {sample:.1f} tokens/s; {sample / raw:.2f}x (target >= 0.97)")
    print(
        f"The LLM stages over Kafka (librdkafka, batches of {settings.bus.batch_size} messages, as `lema serve` runs"
        " them) vs called directly:"
    )
    for stage, _, _ in LLM_STAGES:
        direct, kafka = rates[stage, "direct"], rates[stage, "kafka"]
        ratios = sorted(k / d for k, d in zip(kafka, direct, strict=True))  # each round's pair measured side by side
        print(
            f"{stage:<8} {len(inputs[stage].measured):>3} messages  direct {statistics.mean(direct):6.1f} tokens/s"
            f"  Kafka {statistics.mean(kafka):6.1f} tokens/s  {statistics.median(ratios):.2f}x"
            f" (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})"
        )
    print(
        "target: sample, correct, evolve >= 0.9x (here with a real LLM; section 3 replays one). Decoding is greedy,"
        " but the server's batches are not batch-invariant: a text, and with it the work, may differ between rounds"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: grpc, correct, kafka, llm")
    parser.add_argument("--calls", type=int, default=6000, help="gRPC Check calls per row")
    parser.add_argument(
        "--check-rounds", type=int, default=20, help="alternating echo/checker rounds the Check calls are split into"
    )
    parser.add_argument("--messages", type=int, default=4000, help="Kafka input messages per stage")
    parser.add_argument("--batch-size", type=int, default=64, help="messages per Kafka batch")
    parser.add_argument("--max-tokens", type=int, default=24, help="SmolLM2 tokens per Correct / sample call")
    parser.add_argument("--correct-calls", type=int, default=4, help="Correct calls at c=1 per round (48 at c=16)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="interleaved rounds (Correct c=1/c=16; Kafka runs per stage; raw client and LLM stages)",
    )
    parser.add_argument(
        "--questions",
        type=int,
        default=24,
        help="questions (x2 samples) for the sample stage; twice as many mistakes, as many seeds",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="the LLM server's batch and the clients' window")
    parser.add_argument("--pair-ports", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pair_ports:
        serve_pair(*args.pair_ports)
        return
    skip = set(args.skip.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        logs = Path(tmp)
        if "grpc" not in skip:
            grpc_check(args.calls, args.check_rounds, logs)
        if "correct" not in skip:
            correct_concurrency(args.max_tokens, args.correct_calls, args.rounds, logs)
        if "kafka" not in skip:
            kafka_stages(args.messages, args.batch_size, args.rounds)
        if "llm" not in skip:
            llm_stages(args.questions, args.concurrency, args.max_tokens, args.rounds, logs)


if __name__ == "__main__":
    main()
