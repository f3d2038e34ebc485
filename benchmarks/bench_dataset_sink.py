"""The dataset sink's cost per batch must not grow with the run: measured in one run on this machine.

Pushes `--records` records (a pipeline's mix: right and wrong paths, verified corrections, drops) through the
dataset writer's code path — `DatasetWriterWorker.process` builds the rows, `commit` appends them with the batch's
offsets as one Delta commit — in `--waves` waves of `--batch`-record batches, into a table on a moto S3 server
(`--store local`: a directory). moto runs in a process of its own, so its request handling does not share the
writer's GIL. Prints per wave the wall seconds, the median batch's milliseconds, the CPU seconds (this process,
delta-rs's threads included; on a shared machine CPU time is the steadiest of the three) and the resident memory,
then last wave / first wave for each (target <= 1.2; also the median of the last three over the first three),
records/s (target >= 5,000), the time a restarted writer needs before it consumes (open the table, read its
partitions' offsets) at a small and at a large table, and 2 writer replicas (processes appending to the same table,
each with its own partitions) against 1 on the same records, with each one's CPU seconds per 1,000 records (what
bounds scale-out when the cores are busy).

Each wave also prints the slowest batch (one that ran a scheduled compaction) and the most live files the table had:
delta-rs replays the list of live files on every commit, so without compaction (`--compact-every 0`) they grow with
every commit and so does the cost per batch; a long history is many small batches (`--batch 100`: 2,000 commits).
Checkpoints keep the removal of each file compaction replaced for `--tombstone-retention` (an hour): a run that
takes less than that shows the cost they add at most, a shorter retention what the cost is after the first hour.

    python benchmarks/bench_dataset_sink.py [--records 200000] [--waves 10] [--batch 2000] [--store s3|local]
        [--compact-every 200] [--skip-replicas] [--tombstone-retention "interval 1 hours"]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from deltalake import DeltaTable

from lema.bus.base import Topics
from lema.config import LemaSettings
from lema.dataset import create_sink, delta
from lema.dataset.table import TableLocation
from lema.pipeline import DatasetWriterWorker, Resources
from lema.records import Attempt, CorrectedAttempt, Correction, Drop, Question, ReasoningPath, Record
from lema.runtime.infra import LOCAL_S3_ACCESS_KEY, LOCAL_S3_SECRET_KEY, LOOPBACK, LocalS3, free_port, wait_for_port

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
SOLUTION = "Step 1: She buys 3 boxes of 12 eggs, so 3 * 12 = 36 eggs.\nStep 2: She uses 9, so 36 - 9 = 27.\n"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def serve_s3(port: int, stop: Any) -> None:
    """moto's S3 server in a process of its own until `stop` is set."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    s3 = LocalS3(port)
    stop.wait()
    s3.stop()


def ratio(values: Sequence[float]) -> str:
    """Last / first, and the median of the last three / the first three."""
    medians = statistics.median(values[-3:]) / statistics.median(values[:3])
    return f"{values[-1] / values[0]:.2f} (median of last 3 / first 3: {medians:.2f})"


def live_files(config: LemaSettings) -> int:
    """The table's live files (what delta-rs replays on every commit)."""
    location = TableLocation.of(config.store, config.run.name)
    return len(DeltaTable(location.uri, storage_options=location.storage_options).file_uris())


def restart_s(config: LemaSettings, sources: list[str]) -> float:
    """Seconds a restarted writer takes before it consumes: open the table, read its partitions' offsets."""
    started = time.perf_counter()
    create_sink(config).offsets(sources)
    return time.perf_counter() - started


def push_batch(worker: DatasetWriterWorker, batch: dict[str, list[Record]], number: int) -> tuple[float, float]:
    """Wall and CPU seconds to process and commit one batch, as the `number`th offset of its partitions."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for topic, records in batch.items():
        worker.process(topic, records)
    worker.commit({f"bench/{topic}/0": number for topic in batch})
    return time.perf_counter() - started, time.process_time() - cpu_started


def interleaved(store: dict[str, Any], large: DatasetWriterWorker, commits: int, size: int, rounds: int) -> None:
    """A batch and a restart on the large table against the same on a new one, alternated so that the machine's
    load hits both alike: what the table's history adds, apart from the load's drift over the waves."""
    new = settings(store, large.settings.dataset.compact_every_commits, "bench-new")
    small = DatasetWriterWorker(new, Resources(new))
    small.commit()  # create the table
    cost: dict[str, list[tuple[float, float]]] = {"large": [], "new": []}
    for i, batch in enumerate(batches(2 * 10**9, 2 * rounds * size, size)):
        if i % 2 == 0:
            cost["large"].append(push_batch(large, batch, commits + i // 2 + 1))
        else:
            cost["new"].append(push_batch(small, batch, i // 2 + 1))
    wall = {name: statistics.median(w for w, _ in values) for name, values in cost.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in cost.items()}
    print(f"a batch at {commits} commits / on a new table (medians of {rounds}, alternated; target <= 1.2):")
    print(f"  wall: {1000 * wall['large']:.1f} / {1000 * wall['new']:.1f} ms = {wall['large'] / wall['new']:.2f}")
    print(f"  CPU:  {1000 * cpu['large']:.1f} / {1000 * cpu['new']:.1f} ms = {cpu['large'] / cpu['new']:.2f}")
    sources = [f"bench/{topic}/0" for topic in (Topics.COT, Topics.MISTAKES, Topics.VERIFIED, Topics.DROPS)]
    restarts: dict[str, list[float]] = {"large": [], "new": []}
    for _ in range(rounds):
        restarts["large"].append(restart_s(large.settings, sources))
        restarts["new"].append(restart_s(small.settings, sources))
    times = {name: statistics.median(values) for name, values in restarts.items()}
    print(f"restart (open the table, read 4 partitions' offsets) at {commits + rounds} commits / on a new table:")
    print(f"  {1000 * times['large']:.1f} / {1000 * times['new']:.1f} ms = {times['large'] / times['new']:.2f}")


def batches(start: int, count: int, size: int) -> Iterator[dict[str, list[Record]]]:
    """Batches of `size` records numbered from `start`: 50% right paths, 30% wrong, 10% corrections, 10% drops."""
    for first in range(start, start + count, size):
        batch: dict[str, list[Record]] = {Topics.COT: [], Topics.MISTAKES: [], Topics.VERIFIED: [], Topics.DROPS: []}
        for i in range(first, min(first + size, start + count)):
            question = Question.create(f"Question {i // 8}: a farm has {i} eggs ...", "27", "gsm8k", f"in:{i // 8}")
            kind = i % 10
            path = ReasoningPath(
                id=f"p-{i:09d}",
                question_id=question.id,
                model="smollm2-135m",
                sample_index=i % 8,
                prompt_version="sample-gsm8k@1",
                text=f"{SOLUTION}The answer is {27 if kind < 5 else 28}.",
                answer="27" if kind < 5 else "28",
                verdict="correct" if kind < 5 else "wrong",
            )
            if kind < 5:
                batch[Topics.COT].append(Attempt(question=question, path=path))
            elif kind < 8:
                batch[Topics.MISTAKES].append(Attempt(question=question, path=path))
            elif kind == 8:
                correction = Correction(
                    id=f"c-{i:09d}",
                    path_id=path.id,
                    question_id=question.id,
                    incorrect_step=2,
                    explanation="Step 2 subtracts the wrong number.",
                    corrected_solution=f"{SOLUTION}The answer is 27.",
                    answer="27",
                    verified=True,
                    corrector_model="smollm2-135m",
                    prompt_version="correct-gsm8k@1",
                )
                batch[Topics.VERIFIED].append(CorrectedAttempt(question=question, path=path, correction=correction))
            else:
                batch[Topics.DROPS].append(Drop(stage="correct", reason="unparsable", record_id=f"c-{i:09d}"))
        yield batch


def settings(store: dict[str, Any], compact_every: int, run: str = "bench") -> LemaSettings:
    return LemaSettings.model_validate(
        {"run": {"name": run}, "store": store, "dataset": {"compact_every_commits": compact_every}}
    )


def push(
    store: dict[str, Any], compact_every: int, replica: int, start: int, count: int, size: int, ready: Any, out: Any
) -> None:
    """One writer process: make its batches, wait for the others, then `process` + `commit` every batch with its
    offsets; reports when it started and finished pushing, and the CPU seconds it used."""
    config = settings(store, compact_every)
    worker = DatasetWriterWorker(config, Resources(config))
    inputs = list(batches(start, count, size))
    worker.commit()  # open the table before the clock starts
    ready.wait()
    started, cpu = time.time(), time.process_time()
    for number, batch in enumerate(inputs):
        for topic, records in batch.items():
            worker.process(topic, records)
        worker.commit({f"bench/{topic}/{replica}": number + 1 for topic in batch})
    out.put((started, time.time(), time.process_time() - cpu))


def replicas(
    store: dict[str, Any], compact_every: int, writers: int, total: int, size: int
) -> tuple[float, list[float]]:
    """Seconds from the first writer's start to the last one's end, `writers` processes appending `total` records
    (each its own share and partitions) to one table together; and each writer's CPU seconds."""
    context = multiprocessing.get_context("spawn")
    ready, out = context.Barrier(writers), context.Queue()
    share = total // writers
    processes = [
        context.Process(
            target=push,
            args=(store, compact_every, 10 * writers + r, 10**8 * writers + r * share, share, size, ready, out),
        )
        for r in range(writers)
    ]
    for process in processes:
        process.start()
    spans = [out.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join()
    return max(end for _, end, _ in spans) - min(start for start, _, _ in spans), [cpu for _, _, cpu in spans]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--replica-records", type=int, default=60_000)
    parser.add_argument("--store", choices=("s3", "local"), default="s3")
    parser.add_argument(
        "--compact-every",
        type=int,
        default=LemaSettings().dataset.compact_every_commits,
        help="dataset.compact_every_commits (0: no compaction)",
    )
    parser.add_argument("--skip-replicas", action="store_true", help="skip 2 writers against 1")
    parser.add_argument(
        "--tombstone-retention",
        default=delta.TOMBSTONE_RETENTION,
        help="delta.deletedFileRetentionDuration of the tables: a run shorter than it keeps every compaction's "
        "removals in each checkpoint",
    )
    args = parser.parse_args()
    delta.TOMBSTONE_RETENTION = args.tombstone_retention

    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        server, stop = None, context.Event()
        if args.store == "s3":
            port = free_port()
            server = context.Process(target=serve_s3, args=(port, stop))
            server.start()
            wait_for_port(port, 60, "the moto S3 server")
            os.environ.update(LEMA_S3_ACCESS_KEY=LOCAL_S3_ACCESS_KEY, LEMA_S3_SECRET_KEY=LOCAL_S3_SECRET_KEY)
            store: dict[str, Any] = {"kind": "minio", "endpoint": f"{LOOPBACK}:{port}", "bucket": "bench"}
        else:
            store = {"kind": "local", "root": tmp}
        try:
            run(args, store, server.pid if server is not None else None)
        finally:
            if server is not None:
                stop.set()
                server.join(timeout=30)


def run(args: argparse.Namespace, store: dict[str, Any], server: int | None) -> None:
    per_wave = args.records // args.waves
    print(f"{args.records} records in {args.waves} waves of {per_wave}, batches of {args.batch}, {args.store}")
    kept = args.tombstone_retention
    print(f"compaction every {args.compact_every} commits of the writer (0: none), removals kept {kept}")
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start")
    config = settings(store, args.compact_every)
    worker = DatasetWriterWorker(config, Resources(config))
    started = time.perf_counter()
    (warmup,) = batches(10**9, args.batch, args.batch)  # imports, table creation: once per process
    for topic, records in warmup.items():
        worker.process(topic, records)
    worker.commit({"bench/warmup/0": 1})
    print(f"warm-up batch (imports, table creation): {time.perf_counter() - started:.1f}s")
    header = f"{'wave':>4} {'seconds':>8} {'batch ms':>8} {'max ms':>7} {'CPU s':>6} {'records/s':>10} {'RSS MiB':>8}"
    print(header + f" {'files':>6}" + (" S3 CPU s" if server else ""))
    times, medians, cpu, memory = [], [], [], []
    number = 0
    for wave in range(args.waves):
        walls, cpu_used, files = [], 0.0, 0
        server_started = cpu_s(server) if server else 0.0
        for batch in batches(wave * per_wave, per_wave, args.batch):  # each made outside the clock
            number += 1
            wall, batch_cpu = push_batch(worker, batch, number)
            walls.append(wall)
            cpu_used += batch_cpu
            if number % 10 == 0:  # the most live files in the wave, sampled outside the clock
                files = max(files, live_files(config))
        times.append(sum(walls))
        medians.append(statistics.median(walls))
        cpu.append(cpu_used)
        memory.append(rss_mib())
        line = f"{wave + 1:>4} {times[-1]:>8.2f} {1000 * medians[-1]:>8.1f} {1000 * max(walls):>7.0f} {cpu[-1]:>6.2f}"
        line += f" {per_wave / times[-1]:>10.0f} {memory[-1]:>8.1f} {files:>6}"
        print(line + (f" {cpu_s(server) - server_started:>8.2f}" if server else ""))
    print(f"time per wave, last/first:   {ratio(times)} (target <= 1.2)")
    print(f"median batch, last/first:    {ratio(medians)} (a busy machine's stalls hit a wave's sum, less its median)")
    print(f"CPU per wave, last/first:    {ratio(cpu)}")
    print(f"RSS, last/first wave:        {ratio(memory)} (target <= 1.2)")
    print(f"records/s:                   {args.records / sum(times):.0f} (target >= 5000)")
    print(f"CPU s per 1,000 records:     {1000 * sum(cpu) / args.records:.3f}")
    interleaved(store, worker, number + 1, args.batch, rounds=10)
    if args.skip_replicas:
        return
    one, (one_cpu,) = replicas(store, args.compact_every, 1, args.replica_records, args.batch)
    two, two_cpu = replicas(store, args.compact_every, 2, args.replica_records, args.batch)
    rate = args.replica_records
    print(f"1 writer:  {one:.1f}s ({rate / one:.0f} records/s), CPU {1000 * one_cpu / rate:.3f} s per 1,000 records")
    each = ", ".join(f"{1000 * c / (rate // 2):.3f}" for c in two_cpu)
    print(f"2 writers: {two:.1f}s ({rate / two:.0f} records/s, {rate / 2 / two:.0f} per replica), CPU {each} s/1,000")
    print(f"2 writers / 1 writer throughput: {one / two:.2f} ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    print(f"  CPU per record, 2 writers / 1: {sum(two_cpu) / one_cpu:.2f} (throughput scales with the cores they get)")
    print(f"  cores the 2 writers kept busy: {sum(two_cpu) / two:.2f}; 1 writer: {one_cpu / one:.2f}")


if __name__ == "__main__":
    main()
