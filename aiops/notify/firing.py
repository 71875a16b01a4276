"""What the sinks are told is firing right now: each open incident's own alert and its escalations.

Sinks keep their state in memory only, so a restarted daemon (or a new correlator owner in
scale-out mode) must say again everything that was firing, or Alertmanager lets it expire
silently once ``endsAt`` passes. :class:`FiringAlerts` follows the alerts the daemon sends with
the same rules as :class:`~aiops.notify.alertmanager.AlertmanagerSink`:

* an incident's **own** alert (from the decide stage) replaces its previous one (labels may change
  as the incident evolves);
* an **escalation** (from the act stage: an action failed, was in doubt, or was not verified) is a
  separate alert, one per action;
* a **resolved** alert of an incident ends every alert of it, escalations included.

It is plain data: :meth:`FiringAlerts.snapshot` goes into the checkpoint, and
:meth:`FiringAlerts.alerts` lists what to re-send, own alerts first (the Alertmanager sink takes
the first alert it sees of an incident for the incident's own). :attr:`FiringAlerts.escalated`
remembers which actions' escalations were already sent, so a restart can tell an escalation the
checkpoint does not know about (decided after it, or lost in a crash) from one that ended.

>>> from aiops.records import Alert, AlertStatus
>>> own = Alert(ts=1.0, incident_id="inc-1", status=AlertStatus.FIRING, labels=(("severity", "page"),),
...             annotations=())
>>> esc = Alert(ts=2.0, incident_id="inc-1", status=AlertStatus.FIRING,
...             labels=(("alertname", "AiopsRemediationFailed"),), annotations=(("action_id", "act-1"),))
>>> f = FiringAlerts()
>>> f.add(own); f.add(esc, escalation=True)
>>> [a.ts for a in FiringAlerts.from_snapshot(f.snapshot()).alerts()], sorted(f.escalated)
([1.0, 2.0], ['act-1'])
>>> f.add(Alert(ts=3.0, incident_id="inc-1", status=AlertStatus.RESOLVED, labels=(), annotations=()))
>>> f.alerts(), f.incidents(), sorted(f.escalated)
([], set(), ['act-1'])
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from aiops.records import Alert, AlertStatus

SNAPSHOT_VERSION = 1


def escalation_key(alert: Alert) -> str:
    """An escalation's identity: its action id (one escalation per action), else its label set.

    >>> from aiops.records import AlertStatus
    >>> escalation_key(Alert(ts=1.0, incident_id="i", status=AlertStatus.FIRING, labels=(("a", "b"),),
    ...                      annotations=(("action_id", "act-9"),)))
    'act-9'
    """
    for k, v in alert.annotations:
        if k == "action_id":
            return v
    return ",".join(f"{k}={v}" for k, v in sorted(alert.labels))


class FiringAlerts:
    """The alerts firing now, as the sinks see them (see the module docstring)."""

    def __init__(self) -> None:
        self._own: dict[str, Alert] = {}
        self._escalations: dict[str, dict[str, Alert]] = {}  # incident id -> escalation key -> alert
        self.escalated: set[str] = set()  # escalation keys ever sent (bounded by the caller: forget())
        # False when rebuilt from a checkpoint written before escalations were followed: it cannot
        # tell which escalations were already sent.
        self.escalations_known = True

    def add(self, alert: Alert, *, escalation: bool = False) -> None:
        """Follow one alert sent to the sinks."""
        iid = alert.incident_id
        if alert.status is AlertStatus.RESOLVED:
            self.end(iid)
            return
        if escalation:
            key = escalation_key(alert)
            self._escalations.setdefault(iid, {})[key] = alert
            self.escalated.add(key)
        else:
            self._own[iid] = alert

    def end(self, incident_id: str) -> None:
        """The incident is over (its record says resolved): nothing about it is re-announced any more."""
        self._own.pop(incident_id, None)
        self._escalations.pop(incident_id, None)

    def alerts(self) -> list[Alert]:
        """Everything firing, incidents' own alerts first, each group in the order it fired."""
        return [*self._own.values(), *(a for esc in self._escalations.values() for a in esc.values())]

    def incidents(self) -> set[str]:
        """Incident ids with at least one firing alert."""
        return set(self._own) | set(self._escalations)

    def forget(self, keep: Collection[str]) -> None:
        """Keep only these keys in :attr:`escalated` (the actions the ledger still knows)."""
        self.escalated &= set(keep)

    def snapshot(self) -> dict[str, Any]:
        """Plain data for a checkpoint; ``firing`` keeps the layout older checkpoints had."""
        return {"firing": [alert_out(a) for a in self._own.values()],
                "escalations": [alert_out(a) for esc in self._escalations.values() for a in esc.values()],
                "escalated": sorted(self.escalated), "firing_version": SNAPSHOT_VERSION}

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> FiringAlerts:
        """Rebuild from :meth:`snapshot`; a checkpoint written before escalations were kept has only ``firing``.

        Raises ``KeyError``, ``TypeError`` or ``ValueError`` for malformed data.
        """
        version = int(data.get("firing_version", SNAPSHOT_VERSION))
        if version > SNAPSHOT_VERSION:
            raise ValueError(f"firing alerts saved by a newer version ({version} > {SNAPSHOT_VERSION})")
        f = cls()
        for a in alerts_in(data["firing"]):
            f.add(a)
        for a in alerts_in(data.get("escalations", ())):
            f.add(a, escalation=True)
        f.escalated = {str(k) for k in data.get("escalated", ())}
        f.escalations_known = "escalated" in data
        return f


def alert_out(a: Alert) -> dict[str, Any]:
    """One alert as plain JSON data (the checkpoint's form)."""
    return {"ts": a.ts, "incident_id": a.incident_id, "status": a.status.value,
            "labels": [list(x) for x in a.labels], "annotations": [list(x) for x in a.annotations]}


def alerts_in(items: Iterable[Any]) -> list[Alert]:
    """Alerts from :func:`alert_out` data; raises ``KeyError``/``TypeError``/``ValueError`` if malformed."""
    return [Alert(ts=float(x["ts"]), incident_id=str(x["incident_id"]), status=AlertStatus(x["status"]),
                  labels=tuple((str(k), str(v)) for k, v in x["labels"]),
                  annotations=tuple((str(k), str(v)) for k, v in x["annotations"]))
            for x in items]


__all__ = ["FiringAlerts", "alert_out", "alerts_in", "escalation_key"]
