"""The prediction-log record a model server writes for every prediction, and its JSON decoder.

One JSON object per prediction::

    {"ts": 1767225600.5, "model": "ranker", "version": "v7", "id": "req-81",
     "service": "ranker", "features": {"price": 12.5, "country": "DE"},
     "prediction": 0.83, "label": null}

``label`` is usually unknown at prediction time: a later line with the same ``model`` and
``id``, a ``label`` and no ``features`` supplies it (ground truth arriving late).

>>> r = decode_prediction({"ts": 5, "model": "m", "features": {"x": 1, "c": "a"}, "prediction": 1})
>>> r.features, r.label, r.is_label_only
((('c', 'a'), ('x', 1.0)), None, False)
>>> decode_prediction({"ts": 5, "model": "m", "id": "7", "label": 0}).is_label_only
True
>>> decode_prediction({"ts": 5, "features": {}})
Traceback (most recent call last):
...
aiops.decode.jsonline.DecodeError: missing_model
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from aiops.decode.jsonline import DecodeError, parse_json

Value = float | str
"""A feature value, prediction or label: numbers as float, everything else as text."""

MAX_FEATURES = 256


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One prediction (features, prediction) or one late label (``features`` empty, ``label`` set)."""

    ts: float
    model: str
    features: tuple[tuple[str, Value], ...] = ()
    prediction: Value | None = None
    label: Value | None = None
    id: str | None = None
    version: str | None = None
    service: str | None = None

    @property
    def is_label_only(self) -> bool:
        return not self.features and self.prediction is None and self.label is not None


def _value(v: Any, what: str) -> Value | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        if not math.isfinite(v):
            return None
        return float(v)
    if isinstance(v, str):
        return v[:256]
    raise DecodeError(f"bad_{what}", f"{type(v).__name__} is not a number or a string")


def decode_prediction(data: Any) -> PredictionRecord:
    """Decode one prediction-log object (or a JSON line); raise :class:`DecodeError` with a reason."""
    if isinstance(data, (str, bytes)):
        data = parse_json(data)
    if not isinstance(data, dict):
        raise DecodeError("not_an_object")
    ts = data.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise DecodeError("bad_ts", repr(ts)[:40])
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise DecodeError("missing_model")
    raw = data.get("features") or {}
    if not isinstance(raw, dict):
        raise DecodeError("bad_features", "features must be an object")
    if len(raw) > MAX_FEATURES:
        raise DecodeError("too_many_features", str(len(raw)))
    features = tuple(sorted((str(k), v) for k, v in ((k, _value(v, "feature")) for k, v in raw.items())
                            if v is not None))
    rec = PredictionRecord(
        ts=float(ts), model=model, features=features,
        prediction=_value(data.get("prediction"), "prediction"), label=_value(data.get("label"), "label"),
        id=None if data.get("id") is None else str(data["id"])[:128],
        version=None if data.get("version") is None else str(data["version"])[:64],
        service=data.get("service") if isinstance(data.get("service"), str) else None,
    )
    if not rec.features and rec.prediction is None and rec.label is None:
        raise DecodeError("empty", "no features, prediction or label")
    if rec.is_label_only and rec.id is None:
        raise DecodeError("label_without_id", "a late label needs the prediction's id")
    return rec


def encode_prediction(rec: PredictionRecord) -> dict[str, Any]:
    """The prediction-log object of ``rec``: what :func:`decode_prediction` reads back as ``rec``.

    >>> rec = decode_prediction('{"ts": 5, "model": "m", "features": {"x": 1}, "prediction": 0, "id": "a"}')
    >>> encode_prediction(rec)
    {'ts': 5.0, 'model': 'm', 'features': {'x': 1.0}, 'prediction': 0.0, 'id': 'a'}
    >>> decode_prediction(encode_prediction(rec)) == rec
    True
    """
    out: dict[str, Any] = {"ts": rec.ts, "model": rec.model}
    if rec.features:
        out["features"] = dict(rec.features)
    for key in ("prediction", "label", "id", "version", "service"):
        value = getattr(rec, key)
        if value is not None:
            out[key] = value
    return out

