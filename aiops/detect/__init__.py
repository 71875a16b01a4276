"""Streaming metric anomaly detection, batched across series.

Public surface: :class:`MetricDetectStage` (the pipeline stage), :class:`BatchScorer` (the
numpy core it runs on), and the per-metric overrides loader.
"""

from aiops.detect.core import BatchScorer, ScoreBatch, ScorerParams
from aiops.detect.overrides import MetricOverride, OverrideError, load_overrides, parse_overrides
from aiops.detect.stage import MetricDetectStage, series_defaults

__all__ = [
    "BatchScorer", "MetricDetectStage", "MetricOverride", "OverrideError", "ScoreBatch", "ScorerParams",
    "load_overrides", "parse_overrides", "series_defaults",
]
