"""`aiops check-rules` and `aiops explain` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiops.cli import main

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"


def test_check_rules_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-rules", "--rules", str(REPO_RULES)]) == 0
    assert capsys.readouterr().out.startswith("OK")


def test_check_rules_reports_file_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("remediations:\n  - name: a\n    action: x\n    when: {sigal: {}}\n")
    assert main(["check-rules", "--rules", str(tmp_path)]) == 1
    assert f"{tmp_path / 'bad.yaml'}:4: unknown condition 'sigal'" in capsys.readouterr().err


def test_explain_from_replay_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    recs = [
        {"kind": "incident", "id": "inc-7", "ts": 100.0, "status": "open", "opened_ts": 100.0, "services": ["db"],
         "severity": "warning", "root_causes": [{"service": "db", "score": 0.8, "evidence": ["deploy v2"]}],
         "explain": {"opened": ["2 anomalous series in db"], "ranking": ["#1 db score 0.800 = early 1.00x0.25"],
                     "left_out": ["mail: metric x up at 00:01:40: not connected"]}},
        {"kind": "action", "ts": 100.0, "incident_id": "inc-7", "type": "rollback", "target": {"service": "db"},
         "dry_run": True, "outcome": "planned", "reason": "deploy v2"},
    ]
    out.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["explain", "inc-7", "--replay-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 anomalous series in db" in text and "deploy v2" in text and "mail:" in text and "rollback" in text
    assert main(["explain", "inc-8", "--replay-out", str(out)]) == 1
    assert "inc-7" in capsys.readouterr().err


def test_explain_from_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    from aiops.config import CorrelateSettings
    from aiops.correlate.correlator import Correlator
    from aiops.correlate.topology import Topology
    from aiops.records import Signal, SignalKind
    from aiops.state.envelope import Checkpoint, encode

    c = Correlator(CorrelateSettings(), Topology.from_mapping({"web": ["db"]}),
                   logger=structlog.wrap_logger(structlog.ReturnLogger()))
    for i, svc in enumerate(["db", "web"]):
        c.on_signal(Signal(id=str(i), ts=100.0 + 15 * i, kind=SignalKind.METRIC, service=svc,
                           name="http_requests_total:error_ratio", score=0.9, direction="up"))
    opened = [inc for t in range(100, 400, 15) for inc in c.tick(float(t))]
    state = tmp_path / "state.ckpt"
    state.write_bytes(encode(Checkpoint(state={"stages": {"correlator": c.snapshot()}}, created_event_ts=400.0)))
    assert main(["explain", opened[0].id, "--state", str(state)]) == 0
    text = capsys.readouterr().out
    assert "evidence in db, web" in text and "#1 db" in text
