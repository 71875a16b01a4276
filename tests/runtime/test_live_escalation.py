"""An escalation that was firing when the daemon stopped is said again by the next one.

The live daemon rolls back a bad deploy through the real Kubernetes client against the API
double; the fault outlasts ``verify_s`` in the data, so verification fails and the act stage
escalates (``AiopsRemediationFailed``, a second alert of the incident). Sinks keep no state across
a restart: unless the restarted daemon re-sends the escalation, Alertmanager lets it expire while
the incident is still open. Two ways to stop:

* ``stop``: SIGTERM-like, the shutdown checkpoint holds the escalation;
* ``crash``: every checkpoint from the escalation on fails and the daemon is cancelled (no
  shutdown checkpoint), so the restored state predates the escalation and the replayed tail
  cannot repeat it (the ledger already holds the failure): it comes back from the ledger.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from aiops.config import Settings, load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.records import Alert, AlertStatus, Record
from aiops.runtime.live import InboxItem, LiveDaemon
from aiops.state.memory import MemoryCheckpointStore

from ..act.kube_double import KubeDouble, deployment, write_kubeconfig
from ..integration.telemetry import STEP, build
from .test_live_checkpoint import _free_port, _Recorder

REPO = Path(__file__).resolve().parents[2]
QUIET = structlog.wrap_logger(structlog.ReturnLogger())
ESCALATION = "AiopsRemediationFailed"


def _settings(tmp: Path, kube_port: int) -> Settings:
    rules_dir = tmp / "rules"
    if not rules_dir.exists():
        shutil.copytree(REPO / "rules", rules_dir)
        text = (REPO / "rules" / "actions.yaml").read_text()
        (rules_dir / "actions.yaml").write_text(text.replace("  dry_run: true", "  dry_run: false"))
    return load_settings(env={
        "AIOPS_RULES_DIR": str(rules_dir), "AIOPS_STATE_DIR": str(tmp / "state"),
        "AIOPS_ACT__DRY_RUN": "false", "AIOPS_ACT__TICK_S": "15",
        "AIOPS_ACT__KUBECONFIG": str(write_kubeconfig(tmp / "kubeconfig", kube_port)),
        "AIOPS_RUNTIME__LATENESS_S": "300", "AIOPS_HTTP__PORT": str(_free_port()),
        "AIOPS_LIVE__IDLE_ADVANCE_S": "600", "AIOPS_LIVE__CHECKPOINT_INTERVAL_S": "0.001",
    })


class _Store(MemoryCheckpointStore):
    """A memory store that fails every save once ``fail`` says so (a full disk, say)."""

    def __init__(self) -> None:
        super().__init__(logger=QUIET)
        self.fail = lambda: False

    def save(self, snapshot: dict[str, Any], **kwargs: Any) -> None:
        if self.fail():
            raise OSError(28, "No space left on device")
        super().save(snapshot, **kwargs)


class _Run:
    def __init__(self, settings: Settings, store: _Store) -> None:
        rules = load_rules(settings.rules_dir)
        self.out = io.StringIO()
        self.daemon = LiveDaemon(settings, rules, Topology.from_mapping(rules.topology_mapping()), out=self.out,
                                 kafka=False, step_s=STEP, store=store)
        self.sink = _Recorder()
        self.daemon.sinks.append(self.sink)  # type: ignore[arg-type]
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.daemon.run(self.stop))
        self.fed = 0

    async def ready(self) -> None:
        await _until(lambda: self.daemon._state_loaded and self.daemon._sources_connected)

    async def feed(self, records: list[Record]) -> None:
        """One batch through the daemon's inbox, as a source delivers it; returns once it is processed."""
        cp = self.daemon.checkpointer
        assert cp is not None
        attempts = cp.saved + _failures(self.daemon)
        self.fed += len(records)
        await self.daemon.inbox.put(InboxItem(records, "test", time.monotonic()))
        await _until(lambda: self.daemon.processed_records == self.fed
                     and cp.saved + _failures(self.daemon) > attempts)

    def decisions(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


def _failures(daemon: LiveDaemon) -> int:
    return int(daemon.registry.get_sample_value("aiops_checkpoint_failures_total", {"op": "save"}) or 0)


async def _until(cond: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def _escalations(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if dict(a.labels).get("alertname") == ESCALATION]


@pytest.mark.parametrize("how", ["stop", "crash"])
async def test_a_firing_escalation_is_announced_again_after_a_restart(tmp_path: Path, how: str) -> None:
    records, truth = build(seed=11)
    chunks: list[list[Record]] = []
    for r in records:  # five minutes of event time per batch
        if not chunks or r.ts >= chunks[-1][0].ts + 300:
            chunks.append([])
        chunks[-1].append(r)
    double = await KubeDouble().start()
    double.add_deployment(deployment("api", image="v2", revision=2), history=("v1", "v2"))
    store = _Store()
    try:
        settings = _settings(tmp_path, double.port)
        one = _Run(settings, store)
        await one.ready()
        if how == "crash":
            store.fail = lambda: bool(_escalations(one.sink.sent))
        saved_through = 0  # chunks the last good checkpoint covers
        for i, chunk in enumerate(chunks):
            await one.feed(chunk)
            if _failures(one.daemon) == 0:
                saved_through = i + 1
            if _escalations(one.sink.sent):
                break
        else:
            raise AssertionError("no escalation: the test data no longer fails verification")
        # Still open, the escalation firing: what the next daemon must say again.
        firing = [a for a in one.sink.sent if a.status is AlertStatus.FIRING]
        assert not [a for a in one.sink.sent if a.status is AlertStatus.RESOLVED]
        (escalation,) = _escalations(firing)
        own = [a for a in firing if a not in _escalations(firing)]
        assert own and own[-1].incident_id == escalation.incident_id
        if how == "crash":
            assert saved_through < i + 1, "the last good checkpoint predates the escalation"
            one.task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await one.task
            store.fail = lambda: False
        else:
            saved_through = i + 1
            one.stop.set()
            assert await asyncio.wait_for(one.task, 30) == 0

        two = _Run(_settings(tmp_path, double.port), store)
        await two.ready()
        # Before any input: the incident's alert, then its escalation, as they were (original start times).
        assert two.sink.sent == [own[-1], escalation]
        assert two.daemon.registry.get_sample_value("aiops_open_incidents") == 1
        for chunk in chunks[saved_through:]:
            await two.feed(chunk)
        two.stop.set()
        assert await asyncio.wait_for(two.task, 30) == 0
    finally:
        await double.stop()

    # The replayed tail acted on nothing again (the ledger), so the escalation was not decided twice ...
    assert not [d for d in two.decisions() if d["kind"] == "alert" and d["labels"].get("alertname") == ESCALATION]
    assert [c for c in double.calls() if c[0] != "GET"] == [("PATCH", "/apis/apps/v1/namespaces/default/"
                                                             "deployments/api")]
    # ... and it ended with its incident: nothing is left to re-announce.
    resolved = [a for a in two.sink.sent if a.status is AlertStatus.RESOLVED]
    assert resolved and resolved[-1].incident_id == escalation.incident_id
    assert two.daemon._firing.alerts() == []
    assert truth.root_cause == "api"
