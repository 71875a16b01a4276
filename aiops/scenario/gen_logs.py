"""Log lines for generated scenarios: per-service templates with variable tokens.

Routine lines (INFO, a little benign WARN) follow each service's traffic; fault lines are
driven by the simulation's per-step error rates (:attr:`ServiceSim.drivers`), so a caller logs
``connection refused to postgres:5432`` exactly while postgres refuses it. Error loggers are
rate-limited the way production loggers are: up to 2 lines/s every failure is logged, above
that only 15 % more, capped at 10 lines/s per cause.

Randomness comes from a :class:`Tokens` pool refilled from a numpy ``Generator``, so the lines
are a pure function of the seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aiops.scenario.gen_model import ServiceSim


class Tokens:
    """Cheap random tokens drawn from a buffered numpy Generator (deterministic per seed)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._buf = rng.random(65536)
        self._i = 0

    def u(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.random(65536)
            self._i = 0
        v = float(self._buf[self._i])
        self._i += 1
        return v

    def int(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi]."""
        return lo + int(self.u() * (hi - lo + 1))

    def pick(self, seq: tuple[str, ...]) -> str:
        return seq[int(self.u() * len(seq))]

    def hex(self, n: int) -> str:
        return f"{int(self.u() * 16 ** n):0{n}x}"

    def ms(self, median: float, spread: float = 0.6) -> int:
        """A log-normal duration in milliseconds."""
        return max(1, int(median * float(np.exp(spread * _ndtri(self.u())))))

    def ip(self) -> str:
        return f"10.{self.int(0, 3)}.{self.int(0, 255)}.{self.int(1, 254)}"


def _ndtri(u: float) -> float:
    # inverse normal CDF, Acklam's rational approximation (enough for log noise)
    u = min(max(u, 1e-9), 1 - 1e-9)
    a = (-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716,
         2.506628277459239)
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
    c = (-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968,
         2.938163982698783)
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    if u < 0.02425:
        q = (-2 * np.log(u)) ** 0.5
        return float((((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
                     / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1))
    if u > 1 - 0.02425:
        return -_ndtri(1 - u)
    q = u - 0.5
    r = q * q
    return float((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
                 / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1))


Template = tuple[str, float, Callable[[Tokens], str]]  # level, weight, render

PATHS = ("/", "/products", "/products/{id}", "/search", "/cart", "/checkout", "/api/recommendations",
         "/login", "/static/app.js", "/static/app.css")
QUERIES = ("running shoes", "usb-c cable", "winter jacket", "coffee grinder", "kids lego", "phone case",
           "yoga mat", "headphones", "desk lamp", "backpack")
TABLES = ("orders", "order_items", "products", "payments", "users", "sessions", "inventory", "shipments")
PSPS = ("adyen", "stripe", "paypal")


def _gc(t: Tokens) -> str:
    total = t.pick(("1024", "1024", "768"))
    used = t.int(300, 600)
    return (f"GC pause (G1 Evacuation Pause) young {t.ms(12, 0.5)}ms, heap {used}M->{used - t.int(60, 200)}M"
            f"({total}M)")


def _access(t: Tokens) -> str:
    path = t.pick(PATHS).replace("{id}", str(t.int(1000, 99999)))
    status = "200" if t.u() < 0.97 else t.pick(("304", "404", "302"))
    return (f'{t.ip()} - - "{t.pick(("GET", "GET", "GET", "POST"))} {path} HTTP/1.1" {status} '
            f'{t.int(200, 48000)} {t.ms(35)}ms')


ROUTINE: dict[str, tuple[Template, ...]] = {
    "frontend": (
        ("INFO", 6.0, _access),
        ("INFO", 1.0, lambda t: f"session {t.hex(12)} refreshed for user {t.int(1, 500000)}"),
        ("INFO", 0.3, lambda t: f"heartbeat ok uptime={t.int(1000, 900000)}s goroutines={t.int(80, 240)}"),
        ("WARN", 0.08, lambda t: f"client closed request before response: {t.pick(PATHS)} after {t.ms(900)} ms"),
        ("WARN", 0.03, lambda t: f"slow upstream response from {t.pick(('catalog', 'search'))}: "
                                 f"{t.ms(1300, 0.2)} ms (threshold 1000 ms)"),
    ),
    "checkout": (
        ("INFO", 3.0, lambda t: f"order {t.int(100000, 999999)} placed for user {t.int(1, 500000)}: "
                                f"{t.int(1, 9)} items, total {t.int(5, 400)}.{t.int(10, 99)} EUR ({t.ms(180)} ms)"),
        ("INFO", 1.0, lambda t: f"reserved stock for order {t.int(100000, 999999)} in {t.ms(20)} ms"),
        ("INFO", 0.5, _gc),
        ("INFO", 0.3, lambda t: f"HikariPool-1 - Pool stats (total=20, active={t.int(1, 9)}, "
                                f"idle={t.int(11, 19)}, waiting=0)"),
        ("WARN", 0.15, lambda t: f"promo code {t.pick(('SPRING10', 'WELCOME5', 'FREESHIP'))} expired, "
                                 f"ignoring (order {t.int(100000, 999999)})"),
    ),
    "cart": (
        ("INFO", 4.0, lambda t: f"cart {t.hex(10)} updated: {t.int(1, 12)} items (user {t.int(1, 500000)})"),
        ("INFO", 0.3, lambda t: f"cache hit ratio 0.{t.int(90, 99)} over last 60s ({t.int(2000, 9000)} lookups)"),
        ("INFO", 0.5, _gc),
        ("WARN", 0.03, lambda t: f"cart {t.hex(10)} exceeds 50 items, truncating view"),
    ),
    "catalog": (
        ("INFO", 4.0, lambda t: f"GET /products/{t.int(1000, 99999)} served from "
                                f"{t.pick(('cache', 'cache', 'cache', 'db'))} in {t.ms(9)} ms"),
        ("INFO", 0.1, lambda t: f"refreshed category index: {t.int(300, 340)} categories in {t.ms(400)} ms"),
        ("WARN", 0.1, lambda t: f"product {t.int(1000, 99999)} has no price in currency "
                                f"{t.pick(('CHF', 'SEK', 'PLN'))}, falling back to EUR"),
    ),
    "search": (
        ("INFO", 4.0, lambda t: f'query "{t.pick(QUERIES)}" returned {t.int(0, 4000)} hits in {t.ms(40)} ms '
                                f'(ranked={t.pick(("true", "true", "false"))})'),
        ("INFO", 0.1, lambda t: f"index segment merge finished: {t.int(10000, 90000)} docs in {t.ms(3000)} ms"),
        ("WARN", 0.05, lambda t: f'query "{t.pick(QUERIES)}" hit result window limit (10000)'),
    ),
    "payments": (
        ("INFO", 4.0, lambda t: f"payment {t.hex(12)} authorized: {t.int(5, 400)}.{t.int(10, 99)} EUR via "
                                f"{t.pick(PSPS)} in {t.ms(90)} ms"),
        ("INFO", 2.0, lambda t: f"payment {t.hex(12)} captured"),
        ("INFO", 0.4, _gc),
        ("WARN", 0.1, lambda t: f"3-D Secure challenge timed out for payment {t.hex(12)}, user retried"),
    ),
    "ranker": (
        ("INFO", 4.0, lambda t: f"ranked {t.int(20, 200)} candidates for request {t.hex(12)} with model "
                                f"search-ranker v7 in {t.ms(15)} ms"),
        ("INFO", 0.2, lambda t: f"feature cache refresh: {t.int(10000, 60000)} keys in {t.ms(800)} ms"),
        ("WARN", 0.15, lambda t: f"missing feature user_tenure_days for user {t.int(1, 500000)}, imputing median"),
    ),
    "recommendations": (
        ("INFO", 4.0, lambda t: f"served {t.int(4, 24)} recommendations for user {t.int(1, 500000)} "
                                f"(strategy={t.pick(('ranked', 'ranked', 'similar', 'popular'))}) in {t.ms(30)} ms"),
        ("WARN", 0.05, lambda t: f"ranker slow, serving fallback popular items for user {t.int(1, 500000)}"),
    ),
    "auth": (
        ("INFO", 3.0, lambda t: f"token issued for user {t.int(1, 500000)} "
                                f"(client {t.pick(('web', 'ios', 'android'))}) expires in 3600 s"),
        ("INFO", 3.0, lambda t: f"session {t.hex(12)} validated in {t.ms(3)} ms"),
        ("WARN", 0.3, lambda t: f"invalid password for user {t.int(1, 500000)} from {t.ip()}"),
    ),
    "inventory": (
        ("INFO", 4.0, lambda t: f"stock level for sku {t.int(100000, 999999)}: {t.int(0, 900)} units "
                                f"(warehouse {t.pick(('AMS1', 'FRA2', 'WAW1'))})"),
        ("WARN", 0.1, lambda t: f"sku {t.int(100000, 999999)} below reorder threshold ({t.int(0, 9)} units)"),
    ),
    "shipping": (
        ("INFO", 4.0, lambda t: f"quote for order {t.int(100000, 999999)}: {t.int(3, 30)}.{t.int(10, 99)} EUR via "
                                f"{t.pick(('dhl', 'ups', 'postnl'))} ({t.ms(60)} ms)"),
        ("WARN", 0.1, lambda t: f"carrier {t.pick(('dhl', 'ups', 'postnl'))} rate API slow: {t.ms(1500, 0.3)} ms"),
    ),
    "notifications": (
        ("INFO", 4.0, lambda t: f"sent {t.pick(('order-confirmation', 'shipping-update'))} e-mail for order "
                                f"{t.int(100000, 999999)} to user {t.int(1, 500000)} in {t.ms(120)} ms"),
        ("WARN", 0.1, lambda t: f"SMTP server deferred message {t.hex(10)}: 451 4.7.1 try again later"),
    ),
    "postgres": (
        ("INFO", 3.0, lambda t: f"LOG:  connection authorized: user=app database=shop "
                                f"application_name={t.pick(('checkout', 'catalog', 'payments', 'auth'))}"),
        ("INFO", 0.3, lambda t: f'LOG:  automatic vacuum of table "shop.public.{t.pick(TABLES)}": index scans: '
                                f'{t.int(0, 2)}'),
        ("INFO", 0.1, lambda t: f"LOG:  checkpoint complete: wrote {t.int(500, 9000)} buffers "
                                f"({t.int(1, 9)}.{t.int(0, 9)}%); write={t.int(20, 200)}.{t.int(100, 999)} s"),
        ("WARN", 0.2, lambda t: f"LOG:  duration: {t.ms(1400, 0.3)} ms  execute <unnamed>: SELECT * FROM "
                                f"{t.pick(TABLES)} WHERE customer_id = $1"),
    ),
    "redis": (
        ("INFO", 1.0, lambda t: f"{t.int(100, 20000)} changes in 60 seconds. Saving..."),
        ("INFO", 1.0, lambda t: f"Background saving started by pid {t.int(1000, 60000)}"),
        ("INFO", 1.0, lambda t: "DB saved on disk"),
        ("INFO", 1.0, lambda t: "Background saving terminated with success"),
    ),
    "kafka": (
        ("INFO", 3.0, lambda t: f"[LocalLog partition={t.pick(('orders', 'payments', 'emails'))}-{t.int(0, 11)}, "
                                f"dir=/var/lib/kafka/data] Rolled new log segment at offset {t.int(10**6, 10**8)} "
                                f"in {t.ms(3)} ms."),
        ("INFO", 0.3, lambda t: f"[GroupCoordinator 1]: Preparing to rebalance group notifications-consumer "
                                f"(reason: member consumer-{t.int(1, 4)} left)"),
    ),
}

PORTS = {"postgres": 5432, "redis": 6379, "kafka": 9092}


def _svc_class(name: str) -> str:
    return "".join(p.capitalize() for p in name.split("-"))


def fault_line(cause: str, service: str, t: Tokens, sims: dict[str, ServiceSim], k: int, lag: int = 0
               ) -> tuple[str, str]:
    """(level, message) of one line logged by ``service`` because of ``cause`` at step ``k``.

    A caller's failures at ``k`` reflect its callee's state ``lag`` steps earlier, so the wording
    (refused, timeout, reset, status) follows that state too.
    """
    cls = _svc_class(service)
    if cause == "bad_deploy":
        if t.u() < 0.6:
            return "ERROR", (f"NullPointerException in {cls}Handler.apply({cls}Handler.java:212) "
                             f"request_id={t.hex(12)}")
        return "ERROR", (f"unhandled exception processing request {t.hex(12)}: java.lang.NullPointerException: "
                         f'Cannot invoke "PromoCode.discount()" because "promo" is null')
    if cause == "shed":
        if t.u() < 0.5:
            return "WARN", f"rejecting request: concurrency limit 64 reached (inflight={t.int(64, 80)})"
        return "ERROR", f"request queue full, returning 503 for {t.pick(PATHS)}"
    if cause == "latency":
        return "WARN", (f"slow call to acquirer {t.pick(PSPS)}: {t.ms(1100, 0.3)} ms "
                        f"(budget 400 ms, payment {t.hex(12)})")
    if cause == "gc_pressure":
        return "WARN", f"GC overhead: full GC took {t.ms(700, 0.4)} ms, heap {t.int(470, 510)}M/512M after collection"
    if cause == "drift":
        f = t.pick(("price_bucket", "session_depth", "query_len"))
        return "WARN", f"feature {f} mean outside training range over last 5m (psi=0.{t.int(21, 48)})"
    if cause.startswith("upstream:"):
        callee = cause.split(":", 1)[1]
        return _upstream_line(service, callee, t, sims, k, max(0, k - lag))
    raise ValueError(cause)


def _upstream_line(service: str, callee: str, t: Tokens, sims: dict[str, ServiceSim], k: int, seen: int
                   ) -> tuple[str, str]:
    c = sims[callee]
    port = PORTS.get(callee, 8080)
    down = c.drivers.get("down")
    if down is not None and down[seen] > 0:
        if t.u() < 0.5:
            return "ERROR", f"connection refused to {callee}:{port} (pool {service}-pool, attempt {t.int(1, 3)}/3)"
        return "ERROR", (f"could not acquire connection from pool within 1000 ms: Connection refused "
                         f"({callee}:{port})")
    fail = sims[service].drivers.get(f"upstream:{callee}")
    tmo = sims[service].drivers.get(f"timeout:{callee}")
    if fail is not None and tmo is not None and fail[k] > 0 and tmo[k] / fail[k] > 0.5:
        return "ERROR", f"call to {callee} failed: timeout after 2000 ms (request_id={t.hex(12)})"
    if any(not inst.scraped[seen] and not inst.reset[seen] for inst in c.instances) and t.u() < 0.7:
        return "ERROR", f"upstream {callee} connection reset by peer after {t.ms(40)} ms"
    code = "500" if t.u() < 0.35 else "503"
    return "ERROR", f"upstream {callee} returned {code} after {t.ms(60)} ms (request_id={t.hex(12)})"


def lifecycle_lines(service: str, reason: str, version: str, restart_count: int, t: Tokens
                    ) -> list[tuple[float, str, str]]:
    """Lines around a process restart: (seconds after the restart, level, message)."""
    cls = _svc_class(service)
    if reason == "CrashLoopBackOff":
        if service == "postgres":
            return [(0.0, "ERROR", f'PANIC:  could not write to file "pg_wal/xlogtemp.{t.int(30, 900)}": '
                                   f"No space left on device"),
                    (0.4, "ERROR", f"LOG:  startup process (PID {t.int(30, 900)}) was terminated by signal 6: "
                                   f"Aborted"),
                    (0.5, "INFO", "LOG:  database system is shut down")]
        return [(0.0, "ERROR", "Can't open the append-only file: No space left on device"),
                (0.2, "ERROR", f"{cls} exited with code 1")]
    lines: list[tuple[float, str, str]] = []
    if reason == "OOMKilled":
        lines += [(-3.0 - t.u() * 5, "ERROR", "java.lang.OutOfMemoryError: Java heap space"),
                  (-1.0 - t.u(), "ERROR", f"Exception in thread \"http-nio-8080-exec-{t.int(1, 64)}\" "
                                          f"java.lang.OutOfMemoryError: Java heap space")]
        start = 25.0
        lines.append((start + 6.0, "WARN", f"previous container terminated: OOMKilled (exit code 137), "
                                           f"restart count {restart_count}"))
    else:
        lines.append((-2.0, "INFO", f"received SIGTERM, draining {t.int(0, 40)} in-flight requests"))
        start = 0.0
    lines.append((start + 4.0 + 3 * t.u(), "INFO", f"Started {cls} {version} in {t.int(3, 9)}.{t.int(0, 9)} seconds"))
    lines.append((start + 9.0, "WARN", "cache warm-up incomplete, serving from origin for 120 s"))
    return lines


def model_swap_lines(model: str, old: str, new: str) -> list[tuple[float, str]]:
    """Lines of a model server switching to a new model version: (seconds from the switch, message)."""
    return [(-40.0, f"loading model {model} version {new} from the model registry"),
            (-4.0, f"model {model} version {new} warmed up, switching traffic from {old}"),
            (0.0, f"serving model {model} version {new} (100% of traffic); unloading {old}")]


BENIGN_BURSTS: dict[str, Callable[[Tokens, str], str]] = {
    "retry": lambda t, callee: f"retrying call to {callee} (attempt 2/3) after {t.ms(80)} ms: connection reset",
    "slow": lambda t, callee: f"slow call to {callee} took {t.ms(1300, 0.2)} ms (threshold 1000 ms)",
}
"""Short WARN bursts that are not incidents (a pool recycling its connections, a noisy neighbour)."""
