"""Checkpoints as files in a state directory: atomic, versioned, compressed, with generations.

Each save writes a new generation ``<name>-<seq>.ckpt`` (``seq`` increasing, zero-padded):

1. the bytes go to a temporary file in the same directory, which is flushed and ``fsync``-ed;
2. ``os.replace`` gives it its final name (atomic on POSIX: readers see all of it or none);
3. the directory is ``fsync``-ed so the new name itself survives a power cut;
4. generations beyond the newest ``keep + 1`` are deleted.

A crash at any point leaves the previous generation whole, and a half-written temporary file is
never mistaken for a checkpoint (it has no ``.ckpt`` name; stale ones are removed at start).

:meth:`FileCheckpointStore.load` tries the newest generation first. An unusable one (damaged,
truncated, another format version) is counted, logged and renamed ``*.corrupt-N`` so nobody
loses the evidence, and the next older generation is tried; with none left, ``load`` returns
``None``.

>>> import tempfile, structlog
>>> quiet = structlog.wrap_logger(structlog.ReturnLogger())
>>> with tempfile.TemporaryDirectory() as d:
...     store = FileCheckpointStore(d, keep=1, logger=quiet)
...     store.save({"a": 1}, event_ts=15.0)
...     store.save({"a": 2}, event_ts=30.0)
...     store.save({"a": 3}, event_ts=45.0)
...     [p.name for p in store.generations()], store.load()
(['state-0000000003.ckpt', 'state-0000000002.ckpt'], {'a': 3})
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from aiops.state.base import Offsets, StoreTelemetry
from aiops.state.envelope import Checkpoint, CheckpointError, decode, encode


class FileCheckpointStore:
    """A :class:`~aiops.state.base.CheckpointStore` on a local directory (see module docstring).

    ``name`` separates several stores in one directory (one per partition, say); ``keep`` is
    how many previous generations to keep besides the newest; ``level`` the zlib level.
    One process writes a given ``(directory, name)``.
    """

    def __init__(self, directory: str | os.PathLike[str], *, name: str = "state", keep: int = 0, level: int = 6,
                 registry: CollectorRegistry | None = None, logger: Any = None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.=-]+", name):
            raise ValueError(f"checkpoint name {name!r}: use letters, digits, '_', '.', '=', '-'")
        if keep < 0:
            raise ValueError("keep must be >= 0")
        self.directory = Path(directory)
        self.name = name
        self.keep = keep
        self.level = level
        self.telemetry = StoreTelemetry("file", registry, logger)
        self._pattern = re.compile(re.escape(name) + r"-(\d{10,})\.ckpt")
        self._tmp_pattern = re.compile(r"\." + re.escape(name) + r"\.tmp-[a-z0-9_]+")
        self._last_loaded: Path | None = None
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()

    @property
    def failures(self) -> dict[str, int]:
        """Unusable checkpoints met so far, by reason."""
        return dict(self.telemetry.failures)

    # -- protocol -----------------------------------------------------------------------------
    def save(self, snapshot: dict[str, Any], *, event_ts: float | None = None,
             offsets: Offsets | None = None) -> None:
        """Write a new generation atomically and durably, then prune old generations."""
        data = encode(Checkpoint(state=snapshot, created_event_ts=event_ts, offsets=dict(offsets or {})),
                      self.level)
        gens = self.generations()
        seq = self._seq(gens[0]) + 1 if gens else 1
        final = self.directory / f"{self.name}-{seq:010d}.ckpt"
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{self.name}.tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fsync_dir()
        for old in gens[self.keep:]:  # gens is newest first and does not include `final`
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        self.telemetry.saved(str(final), len(data), event_ts)

    def load(self) -> dict[str, Any] | None:
        """The newest usable snapshot, or ``None``."""
        cp = self.load_checkpoint()
        return None if cp is None else cp.state

    def load_checkpoint(self) -> Checkpoint | None:
        """The newest usable checkpoint with its event time and offsets, or ``None``."""
        self._last_loaded = None
        for path in self.generations():
            try:
                data = path.read_bytes()
            except OSError as exc:
                self._set_aside(path, "unreadable", str(exc))
                continue
            try:
                cp = decode(data)
            except CheckpointError as exc:
                self._set_aside(path, exc.reason, exc.detail)
                continue
            self._last_loaded = path
            self.telemetry.loaded(str(path), len(data), cp.created_event_ts)
            return cp
        return None

    def set_aside(self, reason: str, detail: str = "") -> None:
        """Move the generation the last :meth:`load` returned out of the way (its state was refused)."""
        if self._last_loaded is not None:
            self._set_aside(self._last_loaded, reason, detail)
            self._last_loaded = None

    # -- helpers ------------------------------------------------------------------------------
    def generations(self) -> list[Path]:
        """Checkpoint files of this store, newest first."""
        found = [p for p in self.directory.iterdir() if self._pattern.fullmatch(p.name)]
        return sorted(found, key=self._seq, reverse=True)

    def _seq(self, path: Path) -> int:
        m = self._pattern.fullmatch(path.name)
        assert m is not None
        return int(m.group(1))

    def _set_aside(self, path: Path, reason: str, detail: str) -> None:
        moved: Path | None = None
        for n in range(1, 10_000):
            candidate = path.with_name(f"{path.name}.corrupt-{n}")
            if not candidate.exists():
                try:
                    os.replace(path, candidate)
                    moved = candidate
                except OSError as exc:
                    detail = f"{detail}; could not move aside: {exc}"
                break
        self.telemetry.unusable(reason, str(path), detail, str(moved) if moved else None)

    def _fsync_dir(self) -> None:
        # Without this a power cut can lose the rename even though the file's bytes are on disk.
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return  # platforms that cannot open a directory (Windows) order renames themselves
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_stale_temporaries(self) -> None:
        for p in self.directory.iterdir():
            if self._tmp_pattern.fullmatch(p.name):
                with contextlib.suppress(OSError):
                    p.unlink()
