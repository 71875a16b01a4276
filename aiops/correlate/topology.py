"""Service call graph with edge provenance: who calls whom, and how sure we are.

Edges come from several sources that disagree in how far they can be trusted, so each edge
keeps the highest trust any source gave it:

========  ============================================================  =====
trust     source                                                        value
========  ============================================================  =====
declared  scenario ``topology``, ``rules/topology.yaml``                 3
labels    ``source_workload`` / ``destination_workload`` signal labels   2
co        services that repeatedly turn anomalous together               1
========  ============================================================  =====

Declared and label edges are directed (caller -> callee) and drive root-cause direction.
Co-anomaly edges carry no direction: they only let signals of the two services join one
incident, which is all that co-occurrence can tell (Chen et al., "CauseInfer", INFOCOM 2014,
make the same distinction between a dependency graph and a correlation graph).

>>> t = Topology.from_mapping({"frontend": ["checkout", "catalog"], "checkout": ["postgres"]})
>>> sorted(t.callees("frontend")), t.callers("postgres")
(['catalog', 'checkout'], ['checkout'])
>>> t.adjacent("postgres", "checkout"), t.adjacent("catalog", "postgres")
(True, False)
>>> t.entry_services()
['frontend']
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from aiops.records import Signal

DECLARED = 3
LABELS = 2
CO_ANOMALY = 1

SOURCE_LABELS = ("source_workload", "source_service", "source_app")
DEST_LABELS = ("destination_workload", "destination_service", "destination_app")


class TopologyError(ValueError):
    """A topology file is not a mapping of caller to a list of callees."""


class Topology:
    """Directed call graph (caller -> callee) plus undirected co-anomaly links.

    ``co_anomaly_min`` is how many times two services must turn anomalous together (within
    one correlation window, as reported by the correlator) before they are linked.
    """

    def __init__(self, co_anomaly_min: int = 3) -> None:
        self._edges: dict[tuple[str, str], int] = {}
        self._callees: dict[str, set[str]] = defaultdict(set)
        self._callers: dict[str, set[str]] = defaultdict(set)
        self._co_counts: dict[tuple[str, str], int] = {}
        self._co: dict[str, set[str]] = defaultdict(set)
        self.co_anomaly_min = co_anomaly_min

    # -- building -------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Iterable[str]], trust: int = DECLARED) -> Topology:
        """Build from ``{caller: [callee, ...]}`` (scenario.yaml ``topology``, rules/topology.yaml)."""
        t = cls()
        t.add_mapping(mapping, trust)
        return t

    @classmethod
    def from_file(cls, path: Path) -> Topology:
        """Read ``rules/topology.yaml`` (``{caller: [callees]}``, optionally under a ``topology:`` key)."""
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise TopologyError(f"{path}: {exc}") from None
        if doc is None:
            return cls()
        if isinstance(doc, dict) and isinstance(doc.get("topology"), dict):
            doc = doc["topology"]
        if not isinstance(doc, dict):
            raise TopologyError(f"{path}: top level must map a caller to a list of callees")
        for caller, callees in doc.items():
            if callees is not None and not isinstance(callees, (list, str)):
                raise TopologyError(f"{path}: {caller} must list its callees")
        return cls.from_mapping({str(k): ([v] if isinstance(v, str) else list(v or [])) for k, v in doc.items()})

    def add_mapping(self, mapping: Mapping[str, Iterable[str]], trust: int = DECLARED) -> None:
        for caller, callees in mapping.items():
            self._callees.setdefault(str(caller), set())
            for callee in callees:
                self.add_edge(str(caller), str(callee), trust)

    def add_edge(self, caller: str, callee: str, trust: int = DECLARED) -> None:
        """Add ``caller -> callee``; an existing edge keeps the higher of the two trusts."""
        if caller == callee:
            return
        key = (caller, callee)
        if self._edges.get(key, 0) >= trust:
            return
        self._edges[key] = trust
        self._callees[caller].add(callee)
        self._callers[callee].add(caller)

    def merge(self, other: Topology | Mapping[str, Iterable[str]] | Iterable[tuple[str, Iterable[str]]]) -> None:
        """Take every edge of ``other``; where both know an edge the higher trust wins.

        ``other`` may also be a ``{caller: callees}`` mapping or ``(caller, callees)`` pairs
        (``Rules.topology``), taken as declared edges.
        """
        if not isinstance(other, Topology):
            self.add_mapping(other if isinstance(other, Mapping) else dict(_pairs(other)))
            return
        for (a, b), trust in other._edges.items():
            self.add_edge(a, b, trust)
        for svc in other._callees:
            self._callees.setdefault(svc, set())
        for pair, n in other._co_counts.items():
            self._co_counts[pair] = max(self._co_counts.get(pair, 0), n)
            if self._co_counts[pair] >= self.co_anomaly_min:
                self._link(*pair)

    def learn_from_signal(self, signal: Signal) -> bool:
        """Learn ``source -> destination`` from a signal's workload labels; True when an edge is new."""
        labels = dict(signal.labels)
        src = next((labels[k] for k in SOURCE_LABELS if labels.get(k)), None)
        dst = next((labels[k] for k in DEST_LABELS if labels.get(k)), None)
        if not src or not dst or src == dst or (src, dst) in self._edges:
            return False
        self.add_edge(src, dst, LABELS)
        return True

    def observe_co_anomaly(self, a: str, b: str) -> bool:
        """Count one joint onset of ``a`` and ``b``; True when this links them."""
        if a == b:
            return False
        pair = (min(a, b), max(a, b))
        n = self._co_counts.get(pair, 0) + 1
        self._co_counts[pair] = n
        if n == self.co_anomaly_min:
            self._link(*pair)
            return True
        return False

    def _link(self, a: str, b: str) -> None:
        self._co[a].add(b)
        self._co[b].add(a)

    # -- queries --------------------------------------------------------------------------

    def callees(self, service: str) -> list[str]:
        return sorted(self._callees.get(service, ()))

    def callers(self, service: str) -> list[str]:
        return sorted(self._callers.get(service, ()))

    def trust(self, caller: str, callee: str) -> int:
        """Trust of the directed edge, 0 when unknown."""
        return self._edges.get((caller, callee), 0)

    def knows(self, service: str) -> bool:
        """True when the graph has any edge (directed or co-anomaly) touching ``service``."""
        return bool(self._callees.get(service) or self._callers.get(service) or self._co.get(service))

    def adjacent(self, a: str, b: str) -> bool:
        """Directly connected by a call (either direction) or a co-anomaly link."""
        return (a, b) in self._edges or (b, a) in self._edges or b in self._co.get(a, ())

    def related(self, a: str, b: str) -> bool:
        """May signals of ``a`` and ``b`` share an incident?

        Same service, adjacent, or both unknown to the graph: without any topology the only
        honest grouping is by time, and one page for two symptoms beats two pages for one cause.
        """
        if a == b or self.adjacent(a, b):
            return True
        return not self.knows(a) and not self.knows(b)

    def entry_services(self) -> list[str]:
        """Services that call others but are called by none: where users' requests come in."""
        return sorted(s for s, callees in self._callees.items() if callees and not self._callers.get(s))

    def is_entry(self, service: str) -> bool:
        return bool(self._callees.get(service)) and not self._callers.get(service)

    def downstream(self, service: str) -> set[str]:
        """Everything ``service`` reaches through calls (transitively)."""
        seen: set[str] = set()
        stack = [service]
        while stack:
            for c in self._callees.get(stack.pop(), ()):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        seen.discard(service)
        return seen

    def services(self) -> list[str]:
        names = set(self._callees) | set(self._callers) | set(self._co)
        return sorted(names)

    def __len__(self) -> int:
        return len(self._edges)

    # -- state ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "edges": [[a, b, t] for (a, b), t in sorted(self._edges.items())],
            "nodes": sorted(self._callees),
            "co_counts": [[a, b, n] for (a, b), n in sorted(self._co_counts.items())],
            "co_anomaly_min": self.co_anomaly_min,
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> Topology:
        if data.get("version") != 1:
            raise ValueError(f"unsupported topology snapshot version {data.get('version')!r}")
        t = cls(co_anomaly_min=int(data.get("co_anomaly_min", 3)))
        for node in data.get("nodes", []):
            t._callees.setdefault(node, set())
        for a, b, trust in data.get("edges", []):
            t.add_edge(a, b, int(trust))
        for a, b, n in data.get("co_counts", []):
            t._co_counts[(a, b)] = int(n)
            if n >= t.co_anomaly_min:
                t._link(a, b)
        return t


def _pairs(items: Iterable[tuple[str, Iterable[str]]]) -> Iterable[tuple[str, list[str]]]:
    merged: dict[str, list[str]] = {}
    for caller, callees in items:
        merged.setdefault(caller, []).extend(callees)
    return merged.items()
