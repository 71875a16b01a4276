"""Model monitoring: data, prediction and concept drift and performance decay -> ``Signal(kind=drift)``.

:class:`~aiops.drift.monitor.DriftMonitor` is the pure core; :mod:`aiops.drift.records` decodes
prediction-log lines; :mod:`aiops.drift.source` reads them from Kafka.
"""

from aiops.drift.monitor import DriftMonitor, DriftSettings
from aiops.drift.records import PredictionRecord, decode_prediction

__all__ = ["DriftMonitor", "DriftSettings", "PredictionRecord", "decode_prediction"]
