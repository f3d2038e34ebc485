"""The dataset sink's cost per batch must not grow with the run: measured in one run on this machine.

Pushes `--records` records (a pipeline's mix: right and wrong paths, verified corrections, drops) through the
dataset writer's code path — `DatasetWriterWorker.process` builds the rows, `commit` appends them with the batch's
offsets as one Delta commit — in `--waves` waves of `--batch`-record batches, into a table on a moto S3 server
(`--store local`: a directory). Prints per wave the seconds and the resident memory, then last wave / first wave for
both (target <= 1.2), records/s (target >= 5,000), and 2 writer replicas (processes appending to the same table,
each with its own partitions) against 1 on the same records.

    python benchmarks/bench_dataset_sink.py [--records 200000] [--waves 10] [--batch 2000] [--store s3|local]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from lema.bus.base import Topics
from lema.config import LemaSettings
from lema.pipeline import DatasetWriterWorker, Resources
from lema.records import Attempt, CorrectedAttempt, Correction, Drop, Question, ReasoningPath, Record

PAGE = os.sysconf("SC_PAGE_SIZE")
SOLUTION = "Step 1: She buys 3 boxes of 12 eggs, so 3 * 12 = 36 eggs.\nStep 2: She uses 9, so 36 - 9 = 27.\n"


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


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


def settings(store: dict[str, Any]) -> LemaSettings:
    return LemaSettings.model_validate({"run": {"name": "bench"}, "store": store})


def push(store: dict[str, Any], replica: int, start: int, count: int, size: int, ready: Any, out: Any) -> None:
    """One writer process: make its batches, wait for the others, then `process` + `commit` every batch with its
    offsets; reports when it started and finished pushing."""
    config = settings(store)
    worker = DatasetWriterWorker(config, Resources(config))
    inputs = list(batches(start, count, size))
    worker.commit()  # open the table before the clock starts
    ready.wait()
    started = time.time()
    for number, batch in enumerate(inputs):
        for topic, records in batch.items():
            worker.process(topic, records)
        worker.commit({f"bench/{topic}/{replica}": number + 1 for topic in batch})
    out.put((started, time.time()))


def replicas(store: dict[str, Any], writers: int, total: int, size: int) -> float:
    """Seconds from the first writer's start to the last one's end, `writers` processes appending `total` records
    (each its own share and partitions) to one table together."""
    context = multiprocessing.get_context("spawn")
    ready, out = context.Barrier(writers), context.Queue()
    share = total // writers
    processes = [
        context.Process(
            target=push, args=(store, 10 * writers + r, 10**8 * writers + r * share, share, size, ready, out)
        )
        for r in range(writers)
    ]
    for process in processes:
        process.start()
    spans = [out.get(timeout=1800) for _ in processes]
    for process in processes:
        process.join()
    return max(end for _, end in spans) - min(start for start, _ in spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--waves", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--replica-records", type=int, default=60_000)
    parser.add_argument("--store", choices=("s3", "local"), default="s3")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        s3 = None
        if args.store == "s3":
            from lema.runtime.infra import LocalS3

            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
            s3 = LocalS3()
            os.environ["LEMA_S3_ACCESS_KEY"], os.environ["LEMA_S3_SECRET_KEY"] = s3.access_key, s3.secret_key
            store: dict[str, Any] = {"kind": "minio", "endpoint": s3.endpoint, "bucket": "bench"}
        else:
            store = {"kind": "local", "root": tmp}
        try:
            per_wave = args.records // args.waves
            print(f"{args.records} records in {args.waves} waves of {per_wave}, batches of {args.batch}, {args.store}")
            times, memory = [], []
            config = settings(store)
            worker = DatasetWriterWorker(config, Resources(config))
            started = time.perf_counter()
            (warmup,) = batches(10**9, args.batch, args.batch)  # imports, table creation: once per process
            for topic, records in warmup.items():
                worker.process(topic, records)
            worker.commit({"bench/warmup/0": 1})
            print(f"warm-up batch (imports, table creation): {time.perf_counter() - started:.1f}s")
            print(f"{'wave':>4} {'seconds':>8} {'records/s':>10} {'RSS MiB':>8}")
            number = 0
            for wave in range(args.waves):
                inputs = list(batches(wave * per_wave, per_wave, args.batch))  # made before the clock starts
                started = time.perf_counter()
                for batch in inputs:
                    for topic, records in batch.items():
                        worker.process(topic, records)
                    number += 1
                    worker.commit({f"bench/{topic}/0": number for topic in batch})
                times.append(time.perf_counter() - started)
                memory.append(rss_mib())
                print(f"{wave + 1:>4} {times[-1]:>8.2f} {per_wave / times[-1]:>10.0f} {memory[-1]:>8.1f}")
            print(f"time per wave, last/first:   {times[-1] / times[0]:.2f} (target <= 1.2)")
            print(f"  (median of last 3 / first 3: {sorted(times[-3:])[1] / sorted(times[:3])[1]:.2f})")
            print(f"RSS, last/first wave:        {memory[-1] / memory[0]:.2f} (target <= 1.2)")
            print(f"records/s:                   {args.records / sum(times):.0f} (target >= 5000)")
            one = replicas(store, 1, args.replica_records, args.batch)
            two = replicas(store, 2, args.replica_records, args.batch)
            rate = args.replica_records
            print(f"1 writer:  {one:.1f}s ({rate / one:.0f} records/s)")
            print(f"2 writers: {two:.1f}s ({rate / two:.0f} records/s)")
            print(f"2 writers / 1 writer throughput: {one / two:.2f} (on {os.cpu_count()} cores)")
        finally:
            if s3 is not None:
                s3.stop()


if __name__ == "__main__":
    main()
