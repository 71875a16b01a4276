"""Notification sinks: where alerts leave the daemon (Alertmanager, webhook, Kafka).

A sink is small: ``send(alert)`` queues without blocking the pipeline, ``run()`` is its
background loop (delivery, retries, resends) supervised by the live shell, and
``close(timeout)`` flushes what is queued. Time in sinks is the wall clock: they are the shell.
"""

from aiops.notify.base import Sink, alert_key

__all__ = ["Sink", "alert_key"]
