"""The sink protocol shared by every notifier, and the idempotency key of an alert."""

from __future__ import annotations

import hashlib
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
    """A stable idempotency key: the same alert (incident, status, event time) always gets the same key,
    so a receiver can drop the repeats a restart or a retry produces.

    >>> from aiops.records import AlertStatus
    >>> a = Alert(ts=1.0, incident_id="inc-1", status=AlertStatus.FIRING, labels=(), annotations=())
    >>> alert_key(a) == alert_key(a), len(alert_key(a))
    (True, 32)
    """
    raw = f"{alert.incident_id}\x00{alert.status.value}\x00{alert.ts!r}".encode()
    return hashlib.sha256(raw).hexdigest()[:32]


def rfc3339(ts: float) -> str:
    """Unix seconds as an RFC 3339 UTC timestamp with milliseconds.

    >>> rfc3339(0.5)
    '1970-01-01T00:00:00.500Z'
    """
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
