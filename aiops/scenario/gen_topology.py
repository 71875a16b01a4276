"""The service catalog the scenario generator draws its topologies from.

A shop-like microservice system: ``frontend`` (the edge, fed by users) calls application
services, which call each other and three datastores (``postgres``, ``redis``, ``kafka``).
Every edge carries how many calls the caller makes per request it serves (``ratio``) and how
much of the callee's failures the caller cannot absorb with retries or fallbacks (``crit``:
1.0 = every failed call fails the caller's request, 0.1 = a fallback hides most of them).

:func:`select` picks ``n`` services: the ones a scenario kind needs first, then the catalog in
priority order; edges to unselected services are dropped.

>>> sorted(select(6, required=("checkout",)))
['cart', 'catalog', 'checkout', 'frontend', 'postgres', 'redis']
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Edge:
    """A call from one service to another."""

    callee: str
    ratio: float  # calls per request served by the caller
    crit: float  # share of failed calls that fail the caller's request


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """Static description of one service; ``rho`` is its CPU utilisation at the daily peak."""

    name: str
    role: str  # edge | app | datastore | ml
    instances: int
    latency_s: float  # median of its own processing time per request (without callees)
    sigma: float  # log-normal shape of its own latency
    rho: float  # CPU utilisation at the daily traffic peak (sets the per-request CPU cost)
    cpu_limit: float  # cores per instance
    cpu_idle: float  # cores used with no traffic
    mem_base: float  # working set bytes per instance at moderate load
    mem_limit: float  # container limit: above it the kernel OOM-kills the container
    jvm: bool  # sawtooth memory and GC log lines
    version: str
    log_rate: float  # routine log lines per second per service at the daily peak
    calls: tuple[Edge, ...] = ()


MiB = 1024.0 * 1024.0

CATALOG: dict[str, ServiceSpec] = {s.name: s for s in (
    ServiceSpec("frontend", "edge", 2, 0.008, 0.45, 0.45, 1.0, 0.03, 180 * MiB, 512 * MiB, False, "v5.12.1", 1.1, (
        Edge("catalog", 0.6, 0.9), Edge("search", 0.3, 0.8), Edge("cart", 0.35, 0.8),
        Edge("checkout", 0.12, 1.0), Edge("recommendations", 0.25, 0.1), Edge("auth", 0.5, 0.9))),
    ServiceSpec("checkout", "app", 2, 0.025, 0.5, 0.4, 1.0, 0.04, 420 * MiB, 1024 * MiB, True, "v2.3.9", 0.35, (
        Edge("payments", 1.0, 0.95), Edge("cart", 1.0, 0.9), Edge("postgres", 3.0, 1.0),
        Edge("kafka", 1.0, 0.3), Edge("inventory", 1.0, 0.8), Edge("shipping", 0.5, 0.3),
        Edge("notifications", 1.0, 0.05))),
    ServiceSpec("cart", "app", 2, 0.006, 0.4, 0.4, 0.5, 0.02, 260 * MiB, 512 * MiB, True, "v1.8.4", 0.45, (
        Edge("redis", 2.0, 0.9),)),
    ServiceSpec("catalog", "app", 1, 0.010, 0.45, 0.45, 1.0, 0.03, 300 * MiB, 768 * MiB, False, "v3.4.0", 0.5, (
        Edge("postgres", 1.0, 0.9), Edge("redis", 2.0, 0.5))),
    ServiceSpec("search", "app", 2, 0.030, 0.5, 0.5, 1.0, 0.04, 640 * MiB, 1536 * MiB, False, "v4.0.7", 0.4, (
        Edge("ranker", 1.0, 0.3), Edge("redis", 1.0, 0.2))),
    ServiceSpec("payments", "app", 1, 0.060, 0.45, 0.3, 0.5, 0.02, 380 * MiB, 1024 * MiB, True, "v6.1.2", 0.3, (
        Edge("postgres", 2.0, 1.0), Edge("kafka", 1.0, 0.3))),
    ServiceSpec("postgres", "datastore", 1, 0.0018, 0.6, 0.5, 4.0, 0.15, 2600 * MiB, 8192 * MiB, False, "15.6", 0.25),
    ServiceSpec("redis", "datastore", 1, 0.0004, 0.4, 0.35, 1.0, 0.02, 900 * MiB, 2048 * MiB, False, "7.2.4", 0.1),
    ServiceSpec("kafka", "datastore", 1, 0.0030, 0.5, 0.3, 2.0, 0.1, 3100 * MiB, 6144 * MiB, True, "3.7.0", 0.15),
    ServiceSpec("ranker", "ml", 1, 0.018, 0.35, 0.25, 2.0, 0.05, 1400 * MiB, 3072 * MiB, False, "v7.0.3", 0.25, (
        Edge("redis", 1.0, 0.6),)),
    ServiceSpec("recommendations", "app", 1, 0.015, 0.45, 0.4, 1.0, 0.03, 350 * MiB, 1024 * MiB, False, "v2.2.0",
                0.2, (Edge("ranker", 1.0, 0.9), Edge("redis", 1.0, 0.3))),
    ServiceSpec("auth", "app", 1, 0.004, 0.4, 0.35, 0.5, 0.02, 150 * MiB, 384 * MiB, False, "v1.15.0", 0.3, (
        Edge("redis", 1.0, 0.7), Edge("postgres", 0.2, 0.9))),
    ServiceSpec("inventory", "app", 1, 0.008, 0.4, 0.35, 0.5, 0.02, 200 * MiB, 512 * MiB, False, "v1.4.2", 0.15, (
        Edge("postgres", 1.0, 1.0),)),
    ServiceSpec("shipping", "app", 1, 0.020, 0.5, 0.3, 0.5, 0.02, 220 * MiB, 512 * MiB, False, "v0.9.8", 0.1, (
        Edge("postgres", 1.0, 1.0), Edge("kafka", 0.5, 0.3))),
    ServiceSpec("notifications", "app", 1, 0.012, 0.5, 0.3, 0.5, 0.02, 170 * MiB, 512 * MiB, False, "v1.1.0", 0.1, (
        Edge("kafka", 1.0, 0.5),)),
)}

PRIORITY = ("frontend", "checkout", "postgres", "catalog", "cart", "redis", "search", "payments", "ranker",
            "kafka", "recommendations", "auth", "inventory", "shipping", "notifications")
"""Fill order; every service has a caller earlier in this list, so any prefix is connected."""


def select(n: int, required: Iterable[str] = ()) -> dict[str, ServiceSpec]:
    """Pick ``n`` services (the required ones first), dropping edges to services not picked."""
    if not 2 <= n <= len(CATALOG):
        raise ValueError(f"--services must be between 2 and {len(CATALOG)}, got {n}")
    chosen: list[str] = ["frontend"]
    for name in required:
        if name not in CATALOG:
            raise ValueError(f"unknown service {name!r}")
        _add_with_callers(name, chosen)
    for name in PRIORITY:
        if len(chosen) >= n:
            break
        if name not in chosen:
            chosen.append(name)
    if len(chosen) > n:
        raise ValueError(f"this scenario needs at least {len(chosen)} services: {chosen}")
    keep = set(chosen)
    out: dict[str, ServiceSpec] = {}
    for name in PRIORITY:
        if name in keep:
            spec = CATALOG[name]
            calls = tuple(e for e in spec.calls if e.callee in keep)
            out[name] = replace(spec, calls=calls)
    return out


def _add_with_callers(name: str, chosen: list[str]) -> None:
    """Add ``name`` and, if none of its callers is chosen yet, the first caller in priority order."""
    if name in chosen:
        return
    callers = [s for s in PRIORITY if any(e.callee == name for e in CATALOG[s].calls)]
    if callers and not any(c in chosen for c in callers):
        _add_with_callers(callers[0], chosen)
    chosen.append(name)


def topological(services: dict[str, ServiceSpec]) -> list[str]:
    """Callers before callees (the edge first, datastores last)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for caller in services:
            if any(e.callee == name for e in services[caller].calls):
                visit(caller)
        order.append(name)

    for name in services:
        visit(name)
    return order


def topology_map(services: dict[str, ServiceSpec]) -> dict[str, list[str]]:
    """The ``topology`` block of scenario.yaml: caller -> callees."""
    return {name: [e.callee for e in spec.calls] for name, spec in services.items() if spec.calls}
