"""Observability of the daemon itself: structured logs, self-metrics, counted rejections."""
