"""Correlation: signals and change events -> incidents with ranked root causes."""

from aiops.correlate.correlator import Correlator
from aiops.correlate.rank import rank_causes
from aiops.correlate.topology import Topology, TopologyError

__all__ = ["Correlator", "Topology", "TopologyError", "rank_causes"]
