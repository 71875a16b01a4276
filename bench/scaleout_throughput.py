"""Scale-out throughput: N `aiops run` instances (live.mode scale_out) in one group vs one, same run.

    python bench/scaleout_throughput.py [--instances 1,2,3] [--samples 1000000] [--partitions 6] [--series 2000]
                                        [--runs 2]

Starts a memory-only Tansu broker (or uses ``--bootstrap``). For each N it creates fresh topics
(metrics with ``--partitions`` partitions, the signals and changelog topics), starts N real
``python -m aiops run`` processes in one consumer group, waits until the group has settled (every
partition assigned, once, and one correlator owner), then produces the same samples — JSON lines,
one Kafka message per service per minute, keyed by service as scale-out requires — and measures,
by scraping every instance's ``/metrics`` every 0.2 s, the time from the first decoded sample
(``aiops_records_in_total``) until every sample has reached a deriver (``aiops_stage_records_total``
for ``derive``, summed over the group; one flush sample per service past the lateness bound
releases the last ones from the reorder buffers). Samples/s of the group is the total
over that time. CPU seconds of every instance (``/proc``) and of the broker are measured over the
same window: on a small shared machine more instances cannot go faster than the cores allow, and
CPU per sample shows what the split costs (signals topic, per-partition halves, more clients).

The producer runs in this process during the measurement (producing after the group settles
keeps joins and rebalances out of the timing); its own time is printed. ``--runs`` rounds go
through every N in turn (so load from other jobs hits each N alike) and medians are reported;
"cores used" is the instances' CPU seconds over the wall time: well under the machine's cores
means the group waited (for a core taken by other jobs, or for the broker), not that it was done.
The last line is ``summary: n1_samples_per_s=... n2_samples_per_s=... speedup_n2=... cores=...``
(medians).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import yaml  # noqa: E402
from kafka_throughput import create_topics, free_port, produce_keyed, sample_lines, series_set, start_broker  # noqa: E402

STEP = 15.0
T0 = 1767225600.0
TICKS = os.sysconf("SC_CLK_TCK")
FLUSH_AHEAD_S = 60.0 + 4 * STEP  # past the default lateness bound (runtime.lateness_s = 60) and the step


def keyed_messages(series: list[tuple[str, dict[str, str], str]], samples: int,
                   steps_per_message: int = 4, seed: int = 1) -> tuple[list[tuple[bytes, bytes]], int]:
    """(key, value) messages in event-time order: one per service per ``steps_per_message`` steps."""
    steps = -(-samples // len(series))
    services = [lab["service"] for _, lab, _ in series]
    out: list[tuple[bytes, bytes]] = []
    pending: dict[str, list[str]] = defaultdict(list)

    def flush() -> None:
        for svc, lines in sorted(pending.items()):
            out.append((svc.encode(), "\n".join(lines).encode()))
        pending.clear()

    count = 0
    for step, i, line in sample_lines(series, samples, seed):
        if i == 0 and step % steps_per_message == 0:  # a message per service every steps_per_message steps
            flush()
        pending[services[i]].append(line)
        count += 1
    flush()
    # One gauge sample per service well past the lateness bound: it releases everything before it from
    # the reorder buffers, so "every sample reached the deriver" marks the end (not counted in ``count``).
    flush_ts = T0 + steps * STEP + FLUSH_AHEAD_S
    for svc in sorted(set(services)):
        line = json.dumps({"name": "bench_flush", "labels": {"service": svc}, "ts": flush_ts, "value": 1.0})
        out.append((svc.encode(), line.encode()))
    return out, count


def scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


RECORDS = 'aiops_records_in_total{kind="metric",source="kafka"}'
DERIVED = 'aiops_stage_records_total{direction="in",stage="derive"}'


class Group:
    """N scale-out instances on fresh topics."""

    def __init__(self, n: int, bootstrap: str, partitions: int, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.metrics_topic = f"sob-m-{tag}"
        self.partitions = partitions
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        base: dict[str, Any] = {
            "rules_dir": str(REPO / "rules"), "log_format": "json", "log_level": "WARNING",
            "kafka": {"bootstrap": bootstrap, "group_id": f"sob-{tag}", "auto_offset_reset": "earliest",
                      "metrics_topic": self.metrics_topic, "logs_topic": "", "events_topic": ""},
            "live": {"mode": "scale_out", "idle_advance_s": 1.0, "signals_topic": f"sob-signals-{tag}",
                     "changelog_topic": f"sob-state-{tag}"},
        }
        asyncio.run(create_topics(bootstrap, [self.metrics_topic], partitions))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}
        env["PYTHONPATH"] = str(REPO)
        for i in range(n):
            port = free_port()
            cfg = tmp / f"{tag}-{i}.yaml"
            cfg.write_text(yaml.safe_dump({**base, "state_dir": str(tmp / f"state-{tag}-{i}"),
                                           "http": {"host": "127.0.0.1", "port": port}}))
            log = (tmp / f"{tag}-{i}.log").open("ab")
            self.procs.append(subprocess.Popen([sys.executable, "-m", "aiops", "--config", str(cfg), "run",
                                                "--step", str(STEP)], cwd=REPO, env=env, stdout=log,
                                               stderr=subprocess.STDOUT))
            self.ports.append(port)
        self.logs = [tmp / f"{tag}-{i}.log" for i in range(n)]

    def settled(self) -> bool:
        got = [scrape(p) for p in self.ports]
        if not all(got):
            return False
        owned = sum(m.get("aiops_scaleout_partitions", 0) for m in got)
        owners = sum(m.get("aiops_scaleout_correlator_owner", 0) for m in got)
        ready = all(m.get("aiops_ready", 0) == 1 for m in got)
        return ready and owned == self.partitions and owners == 1

    def records(self) -> tuple[float, float]:
        """Samples decoded and samples fed to the deriver (released by the reorder buffers), over the group."""
        got = [scrape(p) for p in self.ports]
        return sum(m.get(RECORDS, 0.0) for m in got), sum(m.get(DERIVED, 0.0) for m in got)

    def cpu(self) -> list[float]:
        return [cpu_s(p.pid) for p in self.procs]

    def check_alive(self) -> None:
        for p, log in zip(self.procs, self.logs, strict=True):
            if p.poll() is not None:
                raise SystemExit(f"instance exited {p.returncode}: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_group(n: int, bootstrap: str, partitions: int, messages: list[tuple[bytes, bytes]], total: int,
              broker_pid: int | None, tmp: Path) -> dict[str, float]:
    group = Group(n, bootstrap, partitions, tmp)
    try:
        deadline = time.monotonic() + 180
        while not group.settled():
            group.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"group of {n} did not settle: {group.logs[0].read_text()[-2000:]}")
            time.sleep(0.5)
        time.sleep(2.0)  # let a last rebalance (if any) finish
        if not group.settled():
            raise SystemExit(f"group of {n} unsettled after a pause")
        cpu0, broker0 = group.cpu(), cpu_s(broker_pid) if broker_pid else 0.0
        wall0 = time.perf_counter()
        produce_s = asyncio.run(produce_keyed(bootstrap, group.metrics_topic, messages))
        first = last = None
        deadline = time.monotonic() + 1800
        while True:
            group.check_alive()
            decoded, got = group.records()
            now = time.perf_counter()
            if first is None and decoded > 0:
                first = now
            if got >= total:
                last = now
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"group of {n}: only {got:.0f} of {total} samples after 30 min")
            time.sleep(0.2)
        cpu1, broker1 = group.cpu(), cpu_s(broker_pid) if broker_pid else 0.0
        assert first is not None
        return {"n": n, "seconds": last - first, "rate": total / (last - first), "produce_s": produce_s,
                "since_produce_s": last - wall0, "cpu": sum(cpu1) - sum(cpu0),
                "cpu_each": [b - a for a, b in zip(cpu0, cpu1, strict=True)], "broker_cpu": broker1 - broker0}
    finally:
        group.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", default=None, help="an existing broker (default: start Tansu)")
    ap.add_argument("--instances", default="1,2,3")
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--series", type=int, default=2000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--runs", type=int, default=2, help="rounds over every N; medians are reported")
    args = ap.parse_args()
    counts = [int(x) for x in args.instances.split(",")]
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker, bootstrap = start_broker()
    cores = os.cpu_count() or 1
    results = []
    try:
        messages, total = keyed_messages(series_set(args.series), args.samples)
        services = len({k for k, _ in messages})
        print(f"{total:,} samples of {args.series} series ({services} services, keyed by service) in "
              f"{len(messages):,} messages, {args.partitions} partitions; {cores} cores on this machine "
              f"(shared: other jobs may run)")
        rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        with tempfile.TemporaryDirectory(prefix="aiops-scaleout-bench-") as tmp:
            for run in range(args.runs):
                print(f"round {run + 1}/{args.runs}:")
                for n in counts:
                    r = run_group(n, bootstrap, args.partitions, messages, total,
                                  broker.pid if broker else None, Path(tmp))
                    rounds[n].append(r)
                    each = ", ".join(f"{c:.1f}" for c in r["cpu_each"])
                    print(f"  N={n}: {r['rate']:,.0f} samples/s for the group ({r['seconds']:.1f} s from the first "
                          f"decoded sample until all reached a deriver; produced in {r['produce_s']:.1f} s); "
                          f"instances' CPU {r['cpu']:.1f} s ({each}) = {r['cpu'] / total * 1e6:.1f} us/sample, "
                          f"cores used {r['cpu'] / r['seconds']:.2f}; broker CPU {r['broker_cpu']:.1f} s")
        for n in counts:
            rs = rounds[n]
            results.append({"n": n, "rate": statistics.median(r["rate"] for r in rs),
                            "cpu": statistics.median(r["cpu"] for r in rs),
                            "used": statistics.median(r["cpu"] / r["seconds"] for r in rs)})
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(timeout=10)
    print(f"medians of {args.runs}:")
    for r in results:
        print(f"  N={r['n']}: {r['rate']:,.0f} samples/s, {r['cpu'] / total * 1e6:.1f} us of instance CPU per "
              f"sample, {r['used']:.2f} cores used")
    one = next((r for r in results if r["n"] == 1), results[0])
    parts = [f"n{r['n']}_samples_per_s={r['rate']:.0f}" for r in results]
    parts += [f"speedup_n{r['n']}={r['rate'] / one['rate']:.2f}" for r in results if r["n"] != one["n"]]
    parts += [f"n{r['n']}_cpu_us_per_sample={r['cpu'] / total * 1e6:.1f}" for r in results]
    for r in results:
        if r["n"] != one["n"]:
            print(f"N={r['n']} vs N={one['n']}: {r['rate'] / one['rate']:.2f}x the samples/s, "
                  f"{r['cpu'] / one['cpu']:.2f}x the instances' CPU")
    print("summary: " + " ".join(parts) + f" samples={total} cores={cores} runs={args.runs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
