"""The sink protocol shared by every notifier, and the idempotency key of an alert."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Protocol

from aiops.records import Alert


class Sink(Protocol):
    """Where alerts go. ``send`` never blocks on the network; ``run`` delivers."""

    name: str

    async def start(self) -> None: ...

    def send(self, alert: Alert) -> None: ...

    async def run(self) -> None: ...

    async def close(self, timeout: float) -> None: ...


def alert_key(alert: Alert) -> str:
    """A stable idempotency key: the same alert (incident, labels, status, event time) always gets the same key,
    so a receiver can drop the repeats a restart or a retry produces.

    The labels are part of it because one incident has several alerts (its own and an escalation,
    say) that may share a status and an event time; receivers must not take one for a repeat of
    the other. Annotations are not: they describe an alert, they do not make it another one.

    >>> from aiops.records import AlertStatus
    >>> a = Alert(ts=1.0, incident_id="inc-1", status=AlertStatus.FIRING, labels=(), annotations=())
    >>> b = Alert(ts=1.0, incident_id="inc-1", status=AlertStatus.FIRING, labels=(("alertname", "X"),), annotations=())
    >>> alert_key(a) == alert_key(a), alert_key(a) == alert_key(b), len(alert_key(a))
    (True, False, 32)
    """
    raw = json.dumps([alert.incident_id, alert.status.value, repr(alert.ts), sorted(alert.labels)])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def rfc3339(ts: float) -> str:
    """Unix seconds as an RFC 3339 UTC timestamp with milliseconds.

    >>> rfc3339(0.5)
    '1970-01-01T00:00:00.500Z'
    """
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
