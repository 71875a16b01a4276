"""Template cap: a flood of brand-new templates evicts the least recently seen ones, counted and visible."""

from __future__ import annotations

import structlog
from prometheus_client import CollectorRegistry, generate_latest

from aiops.config import LogSettings
from aiops.logs.stage import EVICT_WARN_S, LogStage, TemplateCollector
from aiops.records import LogRecord

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
         "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]


def novel(i: int) -> str:
    """A line whose shape no other i shares: i + 1 words (Drain groups templates by length first)."""
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(i + 1))


def test_flood_of_new_templates_is_evicted_counted_warned_and_exported() -> None:
    stage = LogStage(LogSettings(max_templates_per_service=10))
    reg = CollectorRegistry()
    reg.register(TemplateCollector(lambda: stage))
    with structlog.testing.capture_logs() as logs:
        for i in range(60):
            ts = i * 15.0
            stage.process(LogRecord(ts, "api", "steady line for ever", "INFO"))
            stage.process(LogRecord(ts + 1, "api", novel(i), "INFO"))
            stage.tick(ts)
    held, evicted = stage.templates_by_service()["api"]
    assert held == 10 and evicted == 61 - 10 == stage.evicted
    assert any("steady line" in t.text for t in stage._services["api"].miner.templates())  # the live one stays
    warned = [e for e in logs if e["event"] == "log_templates_evicted"]
    # one warning, then at most one per EVICT_WARN_S of event time, and together they account for every eviction
    assert [e["service"] for e in warned] == ["api"] * len(warned) and 2 <= len(warned) <= 1 + 60 * 15 / EVICT_WARN_S
    assert sum(e["evicted"] for e in warned) <= evicted and warned[-1]["evicted_total"] <= evicted
    text = generate_latest(reg).decode()
    assert f"aiops_log_templates_evicted_total {float(evicted)}" in text and "aiops_log_templates 10.0" in text


def test_restore_keeps_the_count_and_does_not_warn_again_for_old_evictions() -> None:
    stage = LogStage(LogSettings(max_templates_per_service=10))
    for i in range(30):
        stage.process(LogRecord(i * 15.0, "api", novel(i), "INFO"))
        stage.tick(i * 15.0)
    back = LogStage.from_snapshot(stage.snapshot(), LogSettings(max_templates_per_service=10))
    assert back.evicted == stage.evicted == 20
    with structlog.testing.capture_logs() as logs:
        back.tick(30 * 15.0)
    assert [e for e in logs if e["event"] == "log_templates_evicted"] == []
