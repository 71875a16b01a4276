"""The scenario generator: deterministic, valid per SCENARIO_FORMAT.md, raw series that behave like
Prometheus', and faults that show up where and when the expectations say."""

from __future__ import annotations

import functools
import gzip
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiops.decode.jsonline import decode_event, decode_log, decode_metric, parse_json
from aiops.drift.records import decode_prediction
from aiops.observe.rejects import Rejects
from aiops.scenario.gen_args import KIND_NAMES
from aiops.scenario.generate import DAY0, KINDS, generate
from aiops.sources.scenario import load_scenario, read_records

HOURS = 1.0
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gen")
    # 08:00 UTC: the fault lands on the morning ramp, where a surge can saturate its target
    return {kind: generate(kind, root / kind, seed=7, hours=HOURS, services=6, start=DAY0 + 8 * 3600).path
            for kind in KINDS}


@functools.cache
def _lines(path: Path) -> list[Any]:
    with gzip.open(path, "rb") as fh:
        return [parse_json(line) for line in fh if line.strip()]


@functools.cache
def _series(d: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = defaultdict(list)
    for obj in _lines(d / "metrics.jsonl.gz"):
        s = decode_metric(obj)
        out[(s.name, s.labels)].append((s.ts, s.value))
    return out


def _expect(d: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((d / "scenario.yaml").read_text())
    return doc


def _rate_sum(series: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]], name: str,
              lo: float, hi: float, **match: str) -> float:
    """Sum of counter increases (resets handled like PromQL increase()) of matching series in [lo, hi)."""
    total = 0.0
    for (n, labels), points in series.items():
        lab = dict(labels)
        if n != name or any(lab.get(k) != v for k, v in match.items()):
            continue
        prev = None
        for ts, v in points:
            if math.isnan(v):
                continue
            if prev is not None and lo <= ts < hi:
                total += v - prev if v >= prev else v
            prev = v
    return total


def _error_fraction(series: Any, service: str, lo: float, hi: float) -> float:
    err = sum(_rate_sum(series, "http_requests_total", lo, hi, service=service, code=c) for c in ("500", "503"))
    tot = sum(_rate_sum(series, "http_requests_total", lo, hi, service=service, code=c)
              for c in ("200", "404", "500", "503"))
    return err / max(tot, 1.0)


def test_kind_names_match_the_cli_choices() -> None:
    assert tuple(KINDS) == KIND_NAMES


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate("memory-leak", tmp_path / "a", seed=3, hours=0.5, services=6)
    b = generate("memory-leak", tmp_path / "b", seed=3, hours=0.5, services=6)
    c = generate("memory-leak", tmp_path / "c", seed=4, hours=0.5, services=6)
    for name in ("metrics.jsonl.gz", "logs.jsonl.gz", "events.jsonl.gz"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes(), name
    assert (a.path / "scenario.yaml").read_text().replace("name: a", "") == \
        (b.path / "scenario.yaml").read_text().replace("name: b", "")
    assert (a.path / "metrics.jsonl.gz").read_bytes() != (c.path / "metrics.jsonl.gz").read_bytes()


@pytest.mark.parametrize("kind", ["bad-deploy", "memory-leak", "model-drift", "quiet-bursts"])
def test_every_line_decodes_and_the_reader_accepts_it(made: dict[str, Path], kind: str) -> None:
    d = made[kind]
    sc = load_scenario(d)
    assert sc.step == 15.0 and sc.expect is not None and sc.topology
    for name, decode in (("metrics", decode_metric), ("logs", decode_log), ("events", decode_event)):
        objs = _lines(d / f"{name}.jsonl.gz")
        stamps = [decode(o).ts for o in objs]
        assert stamps == sorted(stamps), f"{name} not in ts order"
        if name != "events":
            assert len(objs) > 1000
    rejects = Rejects(log_examples=False)
    n = sum(1 for _ in read_records(sc, rejects))
    assert n > 10000 and rejects.total == 0
    series = _series(d)
    names = {name for name, _ in series}
    assert {"http_requests_total", "http_request_duration_seconds_bucket", "http_request_duration_seconds_sum",
            "http_request_duration_seconds_count", "process_cpu_seconds_total", "container_memory_working_set_bytes",
            "kube_pod_container_status_restarts_total"} <= names
    for (name, labels), _ in series.items():
        lab = dict(labels)
        assert "service" in lab
        if not name.startswith("model_"):
            assert lab["instance"].startswith(lab["service"] + "-")
    les = {dict(labels)["le"] for name, labels in series if name.endswith("_bucket")}
    assert "+Inf" in les and 8 <= len(les) <= 10


@pytest.mark.parametrize("kind", list(KINDS))
def test_counters_reset_only_at_restarts_and_rollouts(made: dict[str, Path], kind: str) -> None:
    d = made[kind]
    series = _series(d)
    deploys = [(e["ts"], e["service"]) for e in _lines(d / "events.jsonl.gz") if e["type"] == "deploy"]
    restarts: dict[str, list[float]] = defaultdict(list)
    for (name, labels), points in series.items():
        if name == "kube_pod_container_status_restarts_total":
            values = [v for _, v in points]
            assert values == sorted(values), "the restart count never goes down"
            steps = zip(points[1:], points, strict=False)
            restarts[dict(labels)["instance"]] += [t for (t, v), (_, p) in steps if v > p]
    resets = 0
    for (name, labels), points in series.items():
        if not (name.endswith("_total") or name.endswith("_count") or name.endswith("_sum")
                or name.endswith("_bucket")) or name.startswith("kube_"):
            continue
        lab = dict(labels)
        clean = [(t, v) for t, v in points if not math.isnan(v)]
        for (t, v), (_, p) in zip(clean[1:], clean, strict=False):
            if v < p:
                resets += 1
                rollout = any(s == lab["service"] and 0 <= t - dt <= 300 for dt, s in deploys)
                killed = any(-5 <= t - rt <= 120 for rt in restarts[lab["instance"]])
                assert rollout or killed, f"{name}{lab} dropped {p} -> {v} at {t} without a restart"
    if kind == "memory-leak":
        assert resets > 0


@pytest.mark.parametrize("kind", ["bad-deploy", "datastore-down", "quiet-bursts"])
def test_histograms_are_cumulative_in_le_and_match_count(made: dict[str, Path], kind: str) -> None:
    buckets: dict[tuple[str, float], dict[float, float]] = defaultdict(dict)
    counts: dict[tuple[str, float], float] = {}
    for obj in _lines(made[kind] / "metrics.jsonl.gz"):
        s = decode_metric(obj)
        inst = s.label("instance") or ""
        if s.name == "http_request_duration_seconds_bucket":
            le = s.label("le")
            assert le is not None
            buckets[(inst, s.ts)][float(le)] = s.value
        elif s.name == "http_request_duration_seconds_count":
            counts[(inst, s.ts)] = s.value
    assert buckets
    for key, by_le in buckets.items():
        values = [by_le[le] for le in sorted(by_le)]
        assert values == sorted(values), f"buckets not monotone in le at {key}"
        assert by_le[math.inf] == counts[key]


def test_bad_deploy_errors_start_in_the_root_cause_after_the_deploy(made: dict[str, Path]) -> None:
    d = made["bad-deploy"]
    exp = _expect(d)["expect"]["incidents"][0]
    svc, t0 = exp["root_cause"]["service"], exp["fault_start"]
    assert exp["actions"] == ["rollback"]
    deploys = [e for e in _lines(d / "events.jsonl.gz") if e["type"] == "deploy" and e["service"] == svc]
    assert deploys and deploys[0]["ts"] == t0 and deploys[0]["version"] != deploys[0]["previous_version"]
    series = _series(d)
    start = min(t for pts in series.values() for t, _ in pts)
    before = _error_fraction(series, svc, start + 300, t0 - 60)
    after = _error_fraction(series, svc, t0 + 150, t0 + 900)
    assert before < 0.01 and after > 0.05
    callers = [c for c, callees in _expect(d)["topology"].items() if svc in callees]
    caller_after = max(_error_fraction(series, c, t0 + 150, t0 + 900) for c in callers)
    assert 0.002 < caller_after < after
    logs = [o for o in _lines(d / "logs.jsonl.gz") if o["service"] == svc and "NullPointerException" in o["message"]]
    assert logs and min(o["ts"] for o in logs) >= t0


def test_datastore_down_refuses_and_callers_say_so(made: dict[str, Path]) -> None:
    d = made["datastore-down"]
    exp = _expect(d)["expect"]["incidents"][0]
    db, t0 = exp["root_cause"]["service"], exp["fault_start"]
    series = _series(d)
    assert _error_fraction(series, db, t0 + 30, t0 + 600) > 0.9
    assert _rate_sum(series, "http_requests_total", t0 + 30, t0 + 600, service=db, code="200") < 10
    refused = [o for o in _lines(d / "logs.jsonl.gz") if f"connection refused to {db}" in o["message"]]
    assert refused and min(o["ts"] for o in refused) >= t0 + 15
    assert {o["service"] for o in refused} - {db}


def test_latency_injection_raises_tail_latency_before_errors(made: dict[str, Path]) -> None:
    d = made["latency-injection"]
    exp = _expect(d)["expect"]["incidents"][0]
    svc, t0 = exp["root_cause"]["service"], exp["fault_start"]
    series = _series(d)

    def slow_share(lo: float, hi: float) -> float:
        fast = _rate_sum(series, "http_request_duration_seconds_bucket", lo, hi, service=svc, le="0.5")
        total = _rate_sum(series, "http_request_duration_seconds_bucket", lo, hi, service=svc, le="+Inf")
        return 1 - fast / max(total, 1)

    assert slow_share(t0 - 900, t0 - 60) < 0.03
    assert slow_share(t0 + 60, t0 + 300) > 0.2
    assert _error_fraction(series, svc, t0 + 60, t0 + 300) < 0.01


def test_memory_leak_grows_then_oom_restarts(made: dict[str, Path]) -> None:
    d = made["memory-leak"]
    exp = _expect(d)["expect"]["incidents"][0]
    svc, t0 = exp["root_cause"]["service"], exp["fault_start"]
    series = _series(d)
    for (name, labels), points in series.items():
        lab = dict(labels)
        if lab.get("service") != svc:
            continue
        if name == "kube_pod_container_status_restarts_total":
            assert all(v == points[0][1] for t, v in points if t < t0)
            assert points[-1][1] > points[0][1]
        if name == "container_memory_working_set_bytes":
            before = [v for t, v in points if t < t0 and not math.isnan(v)]
            peak = max(v for t, v in points if t >= t0 and not math.isnan(v))
            assert peak > 1.5 * max(before)
    assert any("OutOfMemoryError" in o["message"] for o in _lines(d / "logs.jsonl.gz") if o["service"] == svc)


def test_traffic_surge_multiplies_requests_without_a_deploy(made: dict[str, Path]) -> None:
    d = made["traffic-surge"]
    exp = _expect(d)["expect"]["incidents"][0]
    svc, t0 = exp["root_cause"]["service"], exp["fault_start"]
    assert exp["actions"] == ["scale_up"]
    series = _series(d)
    before = _rate_sum(series, "http_requests_total", t0 - 600, t0 - 60, service=svc) / 540
    after = _rate_sum(series, "http_requests_total", t0 + 180, t0 + 720, service=svc) / 540
    assert after > 2.5 * before
    assert _error_fraction(series, svc, t0 + 180, t0 + 720) > 0.03
    assert not [e for e in _lines(d / "events.jsonl.gz") if e.get("service") == svc and abs(e["ts"] - t0) < 1800]


def test_model_drift_decays_accuracy_only_after_the_fault(made: dict[str, Path]) -> None:
    d = made["model-drift"]
    exp = _expect(d)["expect"]["incidents"][0]
    t0 = exp["fault_start"]
    assert exp["actions"] == ["retrain"]
    acc = next(p for (n, _), p in _series(d).items() if n == "model_online_accuracy")
    before = [v for t, v in acc if t < t0]
    after = [v for t, v in acc if t > t0 + 1500]
    assert min(before) > 0.88 and sum(after) / len(after) < 0.86
    preds = [decode_prediction(o) for o in _lines(d / "predictions.jsonl.gz")]
    assert [p.ts for p in preds] == sorted(p.ts for p in preds)
    scored = {p.id: p for p in preds if not p.is_label_only}
    labels = [p for p in preds if p.is_label_only]
    assert labels and all(lab.id in scored and lab.ts > scored[lab.id].ts for lab in labels)

    def price(lo: float, hi: float) -> float:
        xs = [dict(p.features)["price_bucket"] for p in scored.values() if lo <= p.ts < hi]
        return float(sum(xs)) / len(xs)  # type: ignore[arg-type]

    assert price(t0 + 1300, t0 + 2400) - price(t0 - 1500, t0) > 0.05


@pytest.mark.parametrize("kind", list(KINDS))
def test_expectations_have_the_contract_shape(made: dict[str, Path], kind: str) -> None:
    doc = _expect(made[kind])
    exp = doc["expect"]
    stamps = [decode_metric(o).ts for o in _lines(made[kind] / "metrics.jsonl.gz")]
    first, last = min(stamps), max(stamps)
    if kind.startswith("quiet"):
        assert exp["incidents"] == []
        (span,) = exp["quiet"]
        assert span[0] <= first and span[1] >= last - 15
        return
    (inc,) = exp["incidents"]
    assert 300 <= inc["detect_within"] <= 600
    assert inc["fault_start"] - first >= 0.4 * HOURS * 3600
    fault_end = doc["generator"]["fault_end"]
    for lo, hi in exp["quiet"]:
        # before the fault, or (a retrained model) from the fault's end: never while it lasts
        assert first < lo < hi <= inc["fault_start"] - 60 or (kind == "model-drift" and fault_end <= lo < hi)


def test_bundled_scenarios_are_long_and_faults_start_late() -> None:
    dirs = sorted(p.parent for p in (REPO / "scenarios").glob("*/scenario.yaml"))
    assert dirs, "the bundled scenarios are part of the repository"
    assert len(dirs) >= 8
    for d in dirs:
        sc = load_scenario(d)
        assert sc.expect is not None
        with gzip.open(d / "metrics.jsonl.gz", "rb") as fh:
            first = json.loads(fh.readline())["ts"]
        for inc in sc.expect.incidents:
            assert inc.fault_start - first >= 2 * 3600, d.name
        assert (d / "metrics.jsonl.gz").stat().st_size < 4_500_000, d.name


@pytest.mark.parametrize(("kind", "name", "seed"), [("quiet-bursts", "quiet-benign-bursts", 8),
                                                     ("model-drift", "ranker-model-drift", 6)])
def test_a_bundled_scenario_is_reproduced_byte_for_byte(tmp_path: Path, kind: str, name: str, seed: int) -> None:
    """scenarios/README.md's command rebuilds the committed files exactly (fails if the generator,
    or numpy's random streams, changed without regenerating the bundled scenarios)."""
    committed = REPO / "scenarios" / name
    assert committed.is_dir(), f"bundled scenario {name} missing"
    out = generate(kind, tmp_path / name, seed=seed).path
    files = sorted(p.name for p in committed.iterdir())
    assert files == sorted(p.name for p in out.iterdir())
    for file in files:
        assert (out / file).read_bytes() == (committed / file).read_bytes(), file
