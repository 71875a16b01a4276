"""Log signals: new templates, bursts, error bursts, recoveries, and what must never signal."""

from __future__ import annotations

import json
import random

import pytest

from aiops.config import LogSettings
from aiops.logs.stage import LogStage
from aiops.records import LogRecord, Signal

STEP = 15.0


def _run(stage: LogStage, lines_by_step, steps: int, start: float = 0.0) -> list[Signal]:
    """Feed ``lines_by_step(k) -> [(service, level, message)]`` for k steps, ticking after each."""
    out: list[Signal] = []
    for k in range(steps):
        t0 = start + k * STEP
        lines = lines_by_step(k)
        for i, (service, level, message) in enumerate(lines):
            ts = t0 + STEP * i / max(len(lines), 1)
            out.extend(stage.process(LogRecord(ts=ts, service=service, message=message, level=level)))
        out.extend(stage.tick(t0 + STEP))
    return out


def _routine(k: int, rng: random.Random) -> list[tuple[str, str | None, str]]:
    lines = []
    for _ in range(rng.randint(20, 40)):
        lines.append(("api", "INFO", f"GET /orders/{rng.randint(1, 10**6)} 200 in {rng.randint(1, 900)}ms"))
    for _ in range(rng.randint(0, 3)):
        lines.append(("api", "WARN",
                      f"slow cache lookup for key user:{rng.randint(1, 999)} took {rng.randint(50, 400)}ms"))
    if k % 40 == 0:
        lines.append(("api", "INFO", f"config reloaded from /etc/api/{rng.choice('abc')}.yaml"))
    return lines


def test_routine_info_and_steady_warn_never_signal():
    rng = random.Random(1)
    stage = LogStage(LogSettings(warmup_s=600))
    out = _run(stage, lambda k: _routine(k, rng), steps=2000)  # more than 8 hours
    assert out == []


def test_new_error_template_after_warmup_signals_once_with_evidence_then_recovers():
    rng = random.Random(2)
    stage = LogStage(LogSettings(warmup_s=600))
    assert _run(stage, lambda k: _routine(k, rng), steps=80) == []

    def faulty(k: int):
        lines = _routine(k, rng)
        if k < 10:
            lines += [("api", "ERROR", f"connection refused to postgres:5432 (attempt {i})") for i in range(5)]
        return lines

    out = _run(stage, faulty, steps=20, start=80 * STEP)
    onsets = [s for s in out if s.end_ts is None]
    ends = [s for s in out if s.end_ts is not None]
    assert len(onsets) == 1, out
    sig = onsets[0]
    assert sig.service == "api" and sig.direction == "up" and sig.score > 0
    assert 80 * STEP < sig.ts < 81 * STEP  # onset = the first line of the template, in event time
    assert "connection refused to postgres:<*>" in sig.evidence[0]
    assert any("connection refused to postgres:5432" in e for e in sig.evidence)
    assert any("5432" in e and "parameters" in e for e in sig.evidence)
    # recovery: same id, end_ts set, after the template went quiet
    assert [e.id for e in ends if e.name == sig.name] == [sig.id]
    assert all(e.end_ts >= 90 * STEP for e in ends)


def test_one_stray_error_line_does_not_page():
    rng = random.Random(3)
    stage = LogStage(LogSettings(warmup_s=300))
    _run(stage, lambda k: _routine(k, rng), steps=40)
    out = _run(stage, lambda k: _routine(k, rng) + ([("api", "ERROR", "disk quota exceeded on /var")]
                                                   if k in (0, 10) else []), steps=20, start=40 * STEP)
    assert out == []


def test_new_template_during_warmup_is_not_new():
    stage = LogStage(LogSettings(warmup_s=3600))
    out = _run(stage, lambda k: [("db", "ERROR", f"deadlock detected on table t{k}")] * 5, steps=20)
    assert [s for s in out if "new" in s.evidence[0]] == []


def test_level_none_uses_error_words():
    rng = random.Random(4)
    stage = LogStage(LogSettings(warmup_s=300))

    def base(k: int):
        return [("worker", None, f"processed job {rng.randint(1, 10**5)} in {rng.randint(1, 99)} ms")
                for _ in range(10)]

    assert _run(stage, base, steps=40) == []
    # a new levelless template without error words: silent
    assert _run(stage, lambda k: base(k) + [("worker", None, f"queue resized to {k}")] * 4,
                steps=5, start=40 * STEP) == []
    out = _run(stage, lambda k: base(k) + [("worker", None, f"Traceback: KeyError {k} in handler")] * 4,
               steps=5, start=45 * STEP)
    assert len([s for s in out if s.end_ts is None]) == 1


def test_warn_burst_signals_then_recovers():
    rng = random.Random(5)
    stage = LogStage(LogSettings(warmup_s=300))
    assert _run(stage, lambda k: _routine(k, rng), steps=100) == []

    def burst(k: int):
        lines = _routine(k, rng)
        if 2 <= k < 12:
            lines += [("api", "WARN", f"slow cache lookup for key user:{i} took 900ms") for i in range(40)]
        return lines

    out = _run(stage, burst, steps=30, start=100 * STEP)
    onsets = [s for s in out if s.end_ts is None]
    ends = [s for s in out if s.end_ts is not None]
    names = {s.name for s in onsets}
    assert "log_errors" not in names  # WARN lines are not errors
    assert len(onsets) == 1 and onsets[0].ts >= 102 * STEP and onsets[0].ts < 103 * STEP
    assert "slow cache lookup" in onsets[0].evidence[0]
    assert [e.id for e in ends] == [onsets[0].id]


def test_error_burst_of_known_template_is_one_signal_not_two():
    rng = random.Random(6)
    stage = LogStage(LogSettings(warmup_s=300))

    def base(k: int):
        lines = _routine(k, rng)
        if k % 20 == 0:
            lines.append(("api", "ERROR", f"request {rng.randint(1, 999)} failed: upstream timeout"))
        return lines

    assert _run(stage, base, steps=100) == []
    out = _run(stage, lambda k: base(k) + ([("api", "ERROR", f"request {i} failed: upstream timeout")
                                            for i in range(30)] if k < 6 else []), steps=20, start=100 * STEP)
    onsets = [s for s in out if s.end_ts is None]
    assert len(onsets) == 1 and dict(onsets[0].labels)["signal"] == "template_burst"
    assert "upstream timeout" in onsets[0].evidence[0]
    assert [s.id for s in out if s.end_ts is not None] == [onsets[0].id]


def test_service_error_burst_from_many_small_templates():
    rng = random.Random(9)
    stage = LogStage(LogSettings(warmup_s=300))

    def base(k: int):
        lines = _routine(k, rng)
        if k % 10 == 0:
            lines.append(("api", "ERROR", "handler crashed: state machine exhausted retries"))
        return lines

    kinds = [f"{verb} {noun} failed: {why}" for verb in ("read", "write", "sync", "scan")
             for noun in ("ledger", "index", "journal") for why in ("checksum mismatch", "lock lost")]
    assert _run(stage, base, steps=100) == []
    # 24 different error templates known from the past, each a little more frequent: no template
    # bursts on its own, but the service's errors do
    assert _run(stage, lambda k: base(k) + ([("api", "ERROR", kinds[(k // 3) % 24])] if k % 3 == 0 else []),
                steps=100, start=100 * STEP) == []
    out = _run(stage, lambda k: base(k) + [("api", "ERROR", kinds[(k + i) % 24]) for i in range(8)],
               steps=20, start=200 * STEP)
    onsets = [s for s in out if s.end_ts is None]
    assert [s.name for s in onsets] == ["log_errors"]
    assert "top templates" in onsets[0].evidence[1]


def test_info_template_bursting_by_a_large_factor_signals_but_modest_change_does_not():
    stage = LogStage(LogSettings(warmup_s=300))
    rng = random.Random(7)
    info = lambda n: [("api", "INFO", f"cache miss for {rng.randint(1, 10**6)}") for _ in range(n)]  # noqa: E731
    assert _run(stage, lambda k: info(rng.randint(8, 12)), steps=100) == []
    assert _run(stage, lambda k: info(25), steps=10, start=100 * STEP) == []  # 2.5x: not enough
    out = _run(stage, lambda k: info(400), steps=3, start=110 * STEP)
    assert len(out) == 1 and out[0].end_ts is None


def test_snapshot_restore_gives_the_same_signals():
    rng1, rng2 = random.Random(8), random.Random(8)

    def feed(k: int, rng: random.Random):
        lines = _routine(k, rng)
        if k >= 60:
            lines += [("api", "ERROR", f"OOMKilled container {rng.randint(1, 9)}")] * 3
        return lines

    a = LogStage(LogSettings(warmup_s=300))
    full = _run(a, lambda k: feed(k, rng1), steps=80)
    b = LogStage(LogSettings(warmup_s=300))
    first = _run(b, lambda k: feed(k, rng2), steps=50)
    data = json.loads(json.dumps(b.snapshot()))
    c = LogStage.from_snapshot(data, LogSettings(warmup_s=300))
    rest = _run(c, lambda k: feed(50 + k, rng2), steps=30, start=50 * STEP)
    assert first + rest == full and len(full) >= 1


def test_a_megabyte_line_is_truncated_not_fatal():
    stage = LogStage(LogSettings(warmup_s=0))
    big = "x" * (1 << 20)
    stage.process(LogRecord(ts=1.0, service="api", message=big, level="ERROR"))
    stage.process(LogRecord(ts=2.0, service="api", message=("a1 " * 400_000), level=None))
    assert stage.truncated == 2
    assert len(json.dumps(stage.snapshot())) < 4 * 64 * 1024 + 10_000


def test_stage_state_stays_bounded_with_the_template_cap():
    rng = random.Random(10)
    stage = LogStage(LogSettings(warmup_s=60, max_templates_per_service=20))
    words = lambda: " ".join("".join(rng.choice("abcdefghij") for _ in range(5)) for _ in range(4))  # noqa: E731
    _run(stage, lambda k: [("api", rng.choice(["ERROR", "INFO", None]), words()) for _ in range(30)], steps=200)
    svc = stage._services["api"]
    assert len(svc.miner) <= 20
    assert len(svc.stats) <= 20 + 64 + 1
    assert len(svc.touched) <= len(svc.stats)
    assert len(json.dumps(stage.snapshot())) < 100_000


def test_a_new_template_whose_variants_merge_signals_once_under_the_surviving_id():
    rng = random.Random(11)
    stage = LogStage(LogSettings(warmup_s=300))
    assert _run(stage, lambda k: _routine(k, rng), steps=40) == []
    users = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
    out = _run(stage, lambda k: _routine(k, rng) + [("api", "ERROR", f"login failed for user {users[k % 10]} "
                                                     "from the admin console") for _ in range(2)],
               steps=12, start=40 * STEP)
    onsets = [s for s in out if s.end_ts is None]
    assert len(onsets) == 1, onsets
    miner = stage._services["api"].miner
    assert miner.get(onsets[0].name).text == "login failed for user <*> from the admin console"


def test_a_long_burst_of_the_template_that_carries_the_usual_errors_leaves_no_error_burst_behind():
    # A caller's usual errors are nearly all one template ("upstream X returned 500"). While that
    # template bursts for 40 minutes it has its own signal and its excess is not counted again as
    # the service's errors; the service's error baseline must still hold the usual rate (not learn
    # near-empty steps), or that rate looks like an error burst of its own for an hour once the
    # template calms down.
    rng = random.Random(11)
    stage = LogStage(LogSettings(warmup_s=300))

    def usual(k: int, n: tuple[int, int]) -> list[tuple[str, str | None, str]]:
        lines = _routine(k, rng)
        for _ in range(rng.randint(*n)):
            up = rng.choice(("cart", "catalog", "auth", "search"))
            lines.append(("api", "ERROR", f"upstream {up} returned 503 after {rng.randint(5, 900)} ms "
                                          f"(request_id={rng.getrandbits(40):x})"))
        return lines

    assert _run(stage, lambda k: usual(k, (5, 8)), steps=200) == []
    during = _run(stage, lambda k: usual(k, (35, 45)), steps=160, start=200 * STEP)
    after = _run(stage, lambda k: usual(k, (5, 8)), steps=300, start=360 * STEP)
    onsets = [s for s in during if s.end_ts is None]
    assert [dict(s.labels)["signal"] for s in onsets] == ["template_burst"]
    # the burst ends within its recovery steps, and nothing else starts
    assert [s.id for s in after if s.end_ts is not None] == [onsets[0].id]
    assert [s.end_ts for s in after] == [pytest.approx(360 * STEP + 8 * STEP, abs=2 * STEP)]
    assert [s for s in after if s.end_ts is None] == []
