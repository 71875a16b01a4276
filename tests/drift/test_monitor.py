"""Drift monitor: fires on real shifts with evidence, stays quiet on stable data, clears when drift ends."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from aiops.decode.jsonline import DecodeError
from aiops.drift import DriftMonitor, DriftSettings, PredictionRecord, decode_prediction
from aiops.records import Signal, SignalKind

S = DriftSettings(reference_size=500, min_window=150, window_s=300, eval_every_s=60, min_labels=100)


def stream(n: int, shift_from: int | None = None, back_at: int | None = None, *, seed: int = 0,
           error_from: int | None = None, late_labels: bool = False, version_at: int | None = None,
           ) -> list[PredictionRecord]:
    """One prediction per second; features x (numeric), country (categorical); labels with 10% error."""
    rng = np.random.default_rng(seed)
    out = []
    truth: list[float] = []
    for i in range(n):
        drifting = shift_from is not None and i >= shift_from and (back_at is None or i < back_at)
        if version_at is not None and i >= version_at:
            drifting = True  # the data stays shifted; the new model is trained on it
        x = rng.normal(1.5 if drifting else 0.0, 1.0)
        country = rng.choice(["DE", "FR", "US"], p=[0.2, 0.2, 0.6] if drifting else [0.5, 0.3, 0.2])
        pred = 1.0 if x > 0.5 else 0.0
        err_rate = 0.4 if error_from is not None and i >= error_from else 0.1
        label = pred if rng.random() > err_rate else 1.0 - pred
        version = "v2" if version_at is not None and i >= version_at else "v1"
        rec = PredictionRecord(ts=float(i), model="ranker", features=(("country", str(country)), ("x", float(x))),
                               prediction=pred, label=None if late_labels else label, id=f"p{i}", version=version,
                               service="ranker")
        out.append(rec)
        truth.append(label)
        if late_labels and i >= 30:
            j = i - 30  # ground truth arrives 30 s later
            out.append(PredictionRecord(ts=float(i), model="ranker", label=truth[j], id=f"p{j}"))
    return out


def run(records: list[PredictionRecord], settings: DriftSettings = S) -> list[Signal]:
    mon = DriftMonitor(settings)
    out: list[Signal] = []
    for r in records:
        out += mon.process(r)
        out += mon.tick(r.ts)
    return out


def by_kind(signals: list[Signal], kind: str) -> list[Signal]:
    return [s for s in signals if dict(s.labels)["drift"] == kind]


def test_stable_data_raises_nothing() -> None:
    for seed in range(3):
        assert run(stream(4000, seed=seed)) == []


def test_data_drift_fires_with_evidence_and_clears_when_it_ends() -> None:
    out = by_kind(run(stream(4000, shift_from=1500, back_at=2500)), "data")
    onset, end = out
    assert onset.id == end.id and onset.kind is SignalKind.DRIFT and onset.service == "ranker"
    assert onset.name == "ranker:data_drift" and onset.end_ts is None
    assert 1500 <= onset.ts <= 1700, onset.ts
    assert 2500 <= end.end_ts <= 2500 + 300 + 4 * 60, end.end_ts
    assert onset.score >= S.psi_threshold
    ev = " | ".join(onset.evidence)
    assert "feature x: PSI" in ev and "KS p=" in ev
    assert "feature country: PSI" in ev and "CHI2 p=" in ev


def test_prediction_drift_follows_the_output_distribution() -> None:
    out = by_kind(run(stream(3000, shift_from=1500)), "prediction")
    (onset,) = out
    assert onset.name == "ranker:prediction_drift" and onset.evidence[0].startswith("prediction: PSI")


def test_concept_drift_and_performance_decay_from_labels() -> None:
    out = run(stream(4000, error_from=2000))
    assert by_kind(out, "data") == []  # the inputs did not change: only the relation to the label
    (concept,) = by_kind(out, "concept")
    (perf,) = by_kind(out, "performance")
    assert 2000 <= concept.ts <= 2600 and 2000 <= perf.ts <= 2600
    assert "ADWIN error estimate" in concept.evidence[0] and perf.evidence[0].startswith("error 0.")


def test_late_labels_are_joined_by_id() -> None:
    out = run(stream(4000, error_from=2000, late_labels=True))
    assert len(by_kind(out, "performance")) == 1


def test_new_model_version_ends_drift_and_rebases_the_reference() -> None:
    out = run(stream(5000, shift_from=1500, version_at=3000))
    onset, end = by_kind(out, "data")
    assert end.end_ts == 3000.0 and end.evidence == ("model version v2 deployed",)
    assert [s for s in out if s.ts > 3000 and s.end_ts is None] == []  # the new reference is the new data


def test_unknown_late_labels_and_model_cap_are_counted() -> None:
    mon = DriftMonitor(DriftSettings(max_models=1))
    mon.process(PredictionRecord(ts=0.0, model="a", features=(("x", 1.0),)))
    mon.process(PredictionRecord(ts=0.0, model="b", features=(("x", 1.0),)))
    mon.process(PredictionRecord(ts=0.0, model="a", label=1.0, id="nope"))
    assert mon.skipped == {"too_many_models": 1, "label_without_prediction": 1}


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                    max_leaves=12))
def test_decoder_rejects_anything_with_a_reason(value: object) -> None:
    try:
        rec = decode_prediction(value)
    except DecodeError as exc:
        assert exc.reason
    else:
        assert isinstance(rec, PredictionRecord)


def test_decoder_reasons() -> None:
    for bad, reason in [("{", "bad_json"), ("[]", "not_an_object"), ('{"model": "m"}', "bad_ts"),
                        ('{"ts": 1, "model": "m"}', "empty"),
                        ('{"ts": 1, "model": "m", "label": 1}', "label_without_id"),
                        ('{"ts": 1, "model": "m", "features": {"x": [1]}}', "bad_feature")]:
        try:
            decode_prediction(bad)
        except DecodeError as exc:
            assert exc.reason == reason, (bad, exc.reason)
        else:
            raise AssertionError(bad)


def test_snapshot_restore_gives_the_same_signals() -> None:
    import json

    records = stream(4000, shift_from=1500, back_at=2500, error_from=1800)
    whole = run(records)
    mon = DriftMonitor(S)
    first: list[Signal] = []
    for r in records[:2000]:
        first += mon.process(r)
        first += mon.tick(r.ts)
    restored = DriftMonitor.from_snapshot(json.loads(json.dumps(mon.snapshot())), S)
    rest: list[Signal] = []
    for r in records[2000:]:
        rest += restored.process(r)
        rest += restored.tick(r.ts)
    assert [(s.id, s.end_ts) for s in first + rest] == [(s.id, s.end_ts) for s in whole]
    assert any(s.end_ts is not None for s in rest)
