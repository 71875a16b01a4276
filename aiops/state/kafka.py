"""Checkpoints in a compacted Kafka topic (a changelog), so a new owner of a partition can restore it.

Kafka Streams keeps each task's state store in a changelog topic the same way: the state of
input partition ``p`` lives in partition ``p`` of the changelog topic, under a record key naming
the store, and compaction keeps only the newest record per key. A new owner reads partition
``p`` of the changelog from the beginning to the end offset it had when the restore started,
keeps the newest value per key, and a tombstone (``null`` value) deletes a key.

What is stored is :mod:`aiops.state.envelope`'s bytes, exactly what the file backend writes.

**Large snapshots.** A snapshot of many series is tens of MB; a broker refuses records above its
``max.message.bytes`` (1 MB by default). A value up to ``max_record_bytes`` is written as one
record under the state key. A larger one is written as chunks under keys ``<key>#<generation>#<i>``
and only once every chunk is acknowledged, a small **manifest** under ``<key>`` naming the
generation, the chunk count, the total size and a CRC-32: the manifest is the atomic switch,
as the rename is for files. A writer that dies between chunks leaves chunks no manifest points
to (a *torn write*); they are never restored, and the next save deletes them with tombstones.
Generations are random tokens, so two writers (a zombie owner and its successor) never overwrite
each other's chunks. After a new manifest, the previous generation's chunks are tombstoned, so a
compacted topic holds one generation per key.

**Compaction is an optimisation, never needed for correctness**: restore reads every record
in offset order and keeps the newest, so an uncompacted topic (Tansu as of v0.6 stores
``cleanup.policy=compact``, but in our runs every record stayed readable) restores the same state, only more slowly.
Restore reads at least to the partition's end offset as of its start, and takes whole fetched
batches (records written meanwhile are newer states; a write still in flight has no manifest yet).

**Bad data is never a crash.** A value that is not a usable checkpoint (damaged, truncated,
another format version, a manifest whose chunks are missing or do not match its checksum) is
counted by reason, logged (``checkpoint_unusable``) and *set aside*: its bytes (or its manifest,
whose chunks stay where they are) are copied to ``<key>#!aside#<offset>`` as evidence and the
key is tombstoned, so the next restore does not trip over it; the partition then starts cold.
Reasons are :class:`~aiops.state.envelope.CheckpointError`'s plus ``missing_chunks`` and
``bad_manifest``.

The reading and the writing plan are pure functions of the records (:class:`ChangelogReader`,
:func:`plan_records`); :class:`KafkaChangelogStore` is the asyncio shell around them.

>>> recs = plan_records("g/t-0", b"x" * 10, max_record_bytes=4, generation="ab")
>>> [k for k, _ in recs]
['g/t-0#ab#0', 'g/t-0#ab#1', 'g/t-0#ab#2', 'g/t-0']
>>> reader = ChangelogReader()
>>> for offset, (k, v) in enumerate(recs[:-1] + plan_records("g/t-0", b"yy", 4, "cd") + recs[-1:]):
...     reader.add(k.encode(), v, offset)
>>> reader.finish()["g/t-0"].data  # the manifest, written last, wins over the inline value before it
b'xxxxxxxxxx'
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from aiops.state.base import Offsets, StoreTelemetry
from aiops.state.envelope import Checkpoint, CheckpointError, decode, encode

MANIFEST_MAGIC = b"aiops-changelog-manifest/1\n"
ASIDE = "!aside"
DEFAULT_TOPIC = "aiops.state"
DEFAULT_MAX_RECORD_BYTES = 900 * 1024
"""Below Kafka's default ``max.message.bytes`` (1 MiB) with room for the key and batch overhead."""

_KEY = re.compile(r"[A-Za-z0-9_.=/:-]+")


@dataclass(frozen=True, slots=True)
class Manifest:
    """Names the chunks of one chunked value; written after all of them.

    >>> m = Manifest("ab12", 3, 2_000_000, 42)
    >>> Manifest.parse(m.encode()) == m
    True
    """

    generation: str
    chunks: int
    size: int
    crc32: int

    def encode(self) -> bytes:
        return MANIFEST_MAGIC + json.dumps({"generation": self.generation, "chunks": self.chunks,
                                            "bytes": self.size, "crc32": self.crc32}).encode("ascii")

    @classmethod
    def parse(cls, value: bytes) -> Manifest:
        try:
            d = json.loads(value[len(MANIFEST_MAGIC):])
            m = cls(str(d["generation"]), int(d["chunks"]), int(d["bytes"]), int(d["crc32"]))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CheckpointError("bad_manifest", str(exc)[:200]) from exc
        if m.chunks < 1 or m.size < 0 or "#" in m.generation:
            raise CheckpointError("bad_manifest", f"{m}")
        return m


def chunk_key(key: str, generation: str, index: int) -> str:
    return f"{key}#{generation}#{index}"


def plan_records(key: str, data: bytes, max_record_bytes: int, generation: str) -> list[tuple[str, bytes]]:
    """The records that store ``data`` under ``key``, in the order they must be written.

    One inline record if it fits, else the chunks followed by their manifest (last).
    """
    if len(data) <= max_record_bytes:
        return [(key, data)]
    out = [(chunk_key(key, generation, i), data[pos:pos + max_record_bytes])
           for i, pos in enumerate(range(0, len(data), max_record_bytes))]
    out.append((key, Manifest(generation, len(out), len(data), zlib.crc32(data)).encode()))
    return out


@dataclass(slots=True)
class Restored:
    """What the changelog holds for one state key after a restore read.

    ``data`` is the envelope bytes (``None`` with ``error`` set, or for a deleted key);
    ``chunk_keys`` are the chunk records the value lives in (empty for an inline value).
    """

    key: str
    offset: int
    data: bytes | None = None
    error: CheckpointError | None = None
    manifest: Manifest | None = None
    chunk_keys: frozenset[str] = frozenset()
    raw: bytes | None = None  # the head record's value, kept as evidence when it is set aside


class ChangelogReader:
    """Pure core of a restore: feed records in offset order, then :meth:`finish`.

    ``keys`` limits what is kept to those state keys (a partition may hold other stores).
    Memory stays bounded by the live value of each key plus writes in flight: once a manifest
    is superseded by a newer head record (manifest, inline value or tombstone), its generation's
    chunks can never be restored any more, so only their keys are kept (as garbage to delete).
    Chunks no manifest has named yet are kept to the end: a manifest may still follow them.
    """

    def __init__(self, keys: Collection[str] | None = None, prefix: str | None = None) -> None:
        self._keys = None if keys is None else frozenset(keys)
        self._prefix = prefix
        self._heads: dict[str, tuple[int, bytes | None]] = {}
        self._chunks: dict[str, dict[str, bytes]] = {}
        self._stale: dict[str, set[str]] = {}
        self._referenced: dict[str, set[str]] = {}
        self.skipped: Counter[str] = Counter()
        self.records = 0

    def add(self, key: bytes | None, value: bytes | None, offset: int) -> None:
        self.records += 1
        if key is None:
            self.skipped["no_key"] += 1
            return
        try:
            k = key.decode("utf-8")
        except UnicodeDecodeError:
            self.skipped["bad_key"] += 1
            return
        parts = k.split("#")
        state = parts[0]
        if self._keys is not None and state not in self._keys:
            return
        if self._prefix is not None and not state.startswith(self._prefix):
            return
        if len(parts) == 3:
            if parts[1] == ASIDE:
                return  # evidence of an earlier set-aside; never restored
            chunks = self._chunks.setdefault(state, {})
            if value is None:
                chunks.pop(k, None)
                self._stale.get(state, set()).discard(k)
            else:
                chunks[k] = value
            return
        if len(parts) != 1:
            self.skipped["bad_key"] += 1
            return
        self._heads[state] = (offset, value)
        generation = None
        if value is not None and value.startswith(MANIFEST_MAGIC):
            try:
                generation = Manifest.parse(value).generation
            except CheckpointError:
                pass
        referenced = self._referenced.setdefault(state, set())
        chunks = self._chunks.get(state)
        if chunks and referenced:
            # A generation once named by a manifest and now superseded is never restored again.
            # Chunks no manifest has named yet may be a write still in flight: they stay.
            stale = [c for c in chunks if c.split("#")[1] in referenced and c.split("#")[1] != generation]
            for c in stale:
                del chunks[c]
            self._stale.setdefault(state, set()).update(stale)
        if generation is not None:
            referenced.add(generation)

    def finish(self) -> dict[str, Restored]:
        """Each state key's newest value (tombstoned keys included, with ``data=None``)."""
        out: dict[str, Restored] = {}
        for key, (offset, value) in self._heads.items():
            chunks = self._chunks.get(key, {})
            r = Restored(key, offset, raw=value)
            if value is not None and value.startswith(MANIFEST_MAGIC):
                try:
                    m = r.manifest = Manifest.parse(value)
                    names = [chunk_key(key, m.generation, i) for i in range(m.chunks)]
                    r.chunk_keys = frozenset(names)
                    missing = [n for n in names if n not in chunks]
                    if missing:
                        raise CheckpointError("missing_chunks", f"{len(missing)} of {m.chunks} chunks of "
                                                                f"generation {m.generation}")
                    data = b"".join(chunks[n] for n in names)
                    if len(data) != m.size or zlib.crc32(data) != m.crc32:
                        raise CheckpointError("corrupt_data", "chunks do not match the manifest's size/checksum")
                    r.data = data
                except CheckpointError as exc:
                    r.error = exc
            else:
                r.data = value
            out[key] = r
        return out

    def garbage(self, key: str, keep: Collection[str] = ()) -> set[str]:
        """Chunk records of ``key`` no restore will ever use (older generations, torn writes)."""
        live = set(self._chunks.get(key, {})) | self._stale.get(key, set())
        return live - set(keep)

    def keys_seen(self) -> set[str]:
        return set(self._heads) | {k for k, v in self._chunks.items() if v} | {k for k, v in self._stale.items() if v}


@dataclass
class _Owned:
    """What this process knows about one (partition, key) it saved or restored: chunks to delete later."""

    live: frozenset[str] = frozenset()
    garbage: set[str] = field(default_factory=set)
    raw: bytes | None = None  # the head record last restored (inline value or manifest): evidence if refused
    offset: int = -1


class KafkaChangelogStore:
    """Checkpoint backend on a compacted Kafka topic (see the module docstring).

    ``client_kwargs`` are aiokafka connection arguments (``bootstrap_servers`` at least;
    :func:`aiops.sources.kafka.kafka_client_kwargs` builds them from the settings, TLS and
    SASL included). ``partitions`` is the changelog's partition count when this store creates
    the topic: at least the input topics' count, since input partition ``p`` keeps its state in
    changelog partition ``p``. Use as ``async with KafkaChangelogStore(...) as store:``.
    """

    def __init__(self, client_kwargs: Mapping[str, Any], *, topic: str = DEFAULT_TOPIC, partitions: int = 1,
                 replication: int = 1, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES, level: int = 6,
                 restore_timeout_s: float = 120.0, registry: CollectorRegistry | None = None,
                 logger: Any = None) -> None:
        if "bootstrap_servers" not in client_kwargs:
            raise ValueError("client_kwargs needs bootstrap_servers")
        if max_record_bytes < 1024:
            raise ValueError("max_record_bytes must be >= 1024")
        self.client_kwargs = dict(client_kwargs)
        self.topic = topic
        self.partitions = partitions
        self.replication = replication
        self.max_record_bytes = max_record_bytes
        self.level = level
        self.restore_timeout_s = restore_timeout_s
        self.telemetry = StoreTelemetry("kafka", registry, logger)
        self.log = self.telemetry.log
        self.cleanup_policy: str | None = None  # as the broker reports it, after start()
        self.last_restore: dict[str, float] = {}  # records, bytes, seconds of the latest restore
        self._producer: Any = None
        self._owned: dict[tuple[int, str], _Owned] = {}

    @property
    def failures(self) -> dict[str, int]:
        """Unusable checkpoints met so far, by reason."""
        return dict(self.telemetry.failures)

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the topic if needed (``cleanup.policy=compact``), then start the producer."""
        from aiokafka import AIOKafkaProducer

        await self.ensure_topic()
        # Chunks are already compressed envelope bytes: no producer compression; acks=all so a
        # save returns only once every in-sync replica has the records.
        self._producer = AIOKafkaProducer(acks="all", linger_ms=0, enable_idempotence=False,
                                          max_request_size=self.max_record_bytes + 64 * 1024, **self.client_kwargs)
        await self._producer.start()

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> KafkaChangelogStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def ensure_topic(self) -> bool:
        """Create the changelog topic if it does not exist; ``True`` if this call created it.

        Either way, read back the topic's ``cleanup.policy`` and warn (``changelog_not_compacted``)
        if it is not ``compact``: restore stays correct, but the topic then grows with every save.
        """
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

        admin = AIOKafkaAdminClient(**self.client_kwargs)
        await admin.start()
        try:
            resp = await admin.create_topics([NewTopic(self.topic, self.partitions, self.replication,
                                                       topic_configs={"cleanup.policy": "compact"})])
            code = resp.topic_errors[0][1]
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                raise RuntimeError(f"cannot create changelog topic {self.topic}: error {code} "
                                   f"{resp.topic_errors[0][2]}")
            created = code == 0
            self.cleanup_policy = None
            try:
                described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, self.topic)])
                for res in described[0].resources:
                    for entry in res[4]:
                        if entry[0] == "cleanup.policy":
                            self.cleanup_policy = entry[1]
            except Exception as exc:  # noqa: BLE001 - a broker without DescribeConfigs: just unknown
                self.log.info("changelog_config_unknown", topic=self.topic, error=repr(exc)[:200])
        finally:
            await admin.close()
        if self.cleanup_policy is None or "compact" not in self.cleanup_policy:
            self.log.warning("changelog_not_compacted", topic=self.topic, cleanup_policy=self.cleanup_policy)
        self.log.info("changelog_topic", topic=self.topic, created=created, cleanup_policy=self.cleanup_policy)
        return created

    # -- writing --------------------------------------------------------------------------------
    async def save(self, partition: int, key: str, snapshot: dict[str, Any], *, event_ts: float | None = None,
                   offsets: Offsets | None = None) -> None:
        """Store ``snapshot`` as the newest state of ``key`` in ``partition``; returns once acknowledged.

        Chunks first, all acknowledged, then the manifest (so a crash in between is a torn
        write that is never restored), then tombstones for the generation it replaces.
        """
        _check_key(key)
        data = encode(Checkpoint(state=snapshot, created_event_ts=event_ts, offsets=dict(offsets or {})),
                      self.level)
        records = plan_records(key, data, self.max_record_bytes, uuid.uuid4().hex[:12])
        *chunks, head = records
        await self._send(partition, chunks)
        await self._send(partition, [head])
        owned = self._owned.setdefault((partition, key), _Owned())
        new_live = frozenset(k for k, _ in chunks)
        await self._send(partition, [(k, None) for k in sorted((owned.garbage | owned.live) - new_live)])
        owned.live, owned.garbage = new_live, set()
        self.telemetry.saved(f"{self.topic}[{partition}]/{key}", len(data), event_ts)

    async def delete(self, partition: int, key: str) -> None:
        """Tombstone ``key`` and its chunks (a state deliberately dropped)."""
        _check_key(key)
        owned = self._owned.pop((partition, key), _Owned())
        await self._send(partition, [(key, None), *((k, None) for k in sorted(owned.live | owned.garbage))])

    async def _send(self, partition: int, records: list[tuple[str, bytes | None]]) -> None:
        if not records:
            return
        if self._producer is None:
            raise RuntimeError("KafkaChangelogStore: start() first")
        self._check_partition(partition, await self._producer.partitions_for(self.topic))
        futures = [await self._producer.send(self.topic, value=v, key=k.encode("utf-8"), partition=partition)
                   for k, v in records]
        await asyncio.gather(*futures)

    # -- reading --------------------------------------------------------------------------------
    async def restore(self, partition: int, keys: Collection[str] | None = None,
                      prefix: str | None = None) -> dict[str, Checkpoint]:
        """The newest usable checkpoint of each state key in ``partition`` (all keys, or ``keys``, or
        those starting with ``prefix``).

        Reads from the beginning to the end offset as of the start of the call. Unusable values
        are counted and set aside; a deleted or absent key is simply not in the result.
        """
        from aiokafka import AIOKafkaConsumer, TopicPartition

        t0 = time.perf_counter()
        reader = ChangelogReader(keys, prefix)
        # A short fetch wait: the restore reads data that is already there, and the first position
        # lookup otherwise idles for the default 500 ms (measured against Tansu).
        consumer = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, fetch_max_bytes=64 * 1024 * 1024,
                                    max_partition_fetch_bytes=32 * 1024 * 1024, fetch_max_wait_ms=20,
                                    **self.client_kwargs)
        await consumer.start()
        size = 0
        try:
            await consumer.topics()  # fresh metadata: a partition that does not exist would block forever
            self._check_partition(partition, consumer.partitions_for_topic(self.topic))
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            await consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + self.restore_timeout_s
            while await consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"changelog {self.topic}[{partition}] not read to offset {end} "
                                       f"within {self.restore_timeout_s} s")
                batch = await consumer.getmany(tp, timeout_ms=500)
                # Every record of a fetched batch is taken, even past ``end``: Tansu (v0.6) reports the
                # end offset as the last batch's *base* offset + 1, so stopping exactly at ``end`` would
                # drop the rest of that batch. A record newer than the restore's start is just a newer state.
                for msg in batch.get(tp, ()):
                    size += len(msg.value or b"")
                    reader.add(msg.key, msg.value, msg.offset)
        finally:
            await consumer.stop()
        for reason, n in reader.skipped.items():
            self.log.warning("changelog_record_skipped", topic=self.topic, partition=partition, reason=reason, count=n)

        out: dict[str, Checkpoint] = {}
        results = reader.finish()
        for key, r in sorted(results.items()):
            owned = self._owned[(partition, key)] = _Owned(r.chunk_keys, reader.garbage(key, r.chunk_keys))
            where = f"{self.topic}[{partition}]@{r.offset}/{key}"
            if r.error is None and r.data is None:
                continue  # tombstoned: deliberately no state
            cp: Checkpoint | None = None
            if r.error is None:
                assert r.data is not None
                try:
                    cp = decode(r.data)
                except CheckpointError as exc:
                    r.error = exc
            if cp is None:
                assert r.error is not None
                # The chunks of an unusable value stay as evidence; never deleted by a later save.
                owned.live = frozenset()
                owned.garbage -= r.chunk_keys
                await self._set_aside(partition, key, r.offset, r.raw, r.error.reason, r.error.detail)
                continue
            self.telemetry.loaded(where, len(r.data or b""), cp.created_event_ts)
            owned.raw, owned.offset = r.raw, r.offset
            out[key] = cp
        for key in reader.keys_seen() - set(results):
            # Only chunks, no head record: a first save that was torn. Delete them on the next save.
            self._owned[(partition, key)] = _Owned(frozenset(), reader.garbage(key))
        self.last_restore = {"records": reader.records, "bytes": size, "seconds": time.perf_counter() - t0}
        return out

    def _check_partition(self, partition: int, existing: Collection[int] | None) -> None:
        if partition not in (existing or ()):
            raise ValueError(f"changelog topic {self.topic} has partitions {sorted(existing or ())}, not "
                             f"{partition}: it needs at least as many partitions as the input topics")

    async def load_checkpoint(self, partition: int, key: str) -> Checkpoint | None:
        """The newest usable checkpoint of one key, or ``None`` (cold start)."""
        return (await self.restore(partition, [key])).get(key)

    async def set_aside(self, partition: int, key: str, reason: str, detail: str = "") -> None:
        """The stages refused ``key``'s restored state (``incompatible_state``): move it out of the way."""
        owned = self._owned.setdefault((partition, key), _Owned())
        raw, offset = owned.raw, owned.offset
        owned.live, owned.raw, owned.offset = frozenset(), None, -1  # its chunks are the evidence
        await self._set_aside(partition, key, offset, raw, reason, detail)

    async def _set_aside(self, partition: int, key: str, offset: int, raw: bytes | None, reason: str,
                         detail: str) -> None:
        evidence = f"{key}#{ASIDE}#{offset if offset >= 0 else uuid.uuid4().hex[:12]}"
        records: list[tuple[str, bytes | None]] = []
        if raw is not None and len(raw) <= self.max_record_bytes:
            records.append((evidence, raw))
        records.append((key, None))
        try:
            await self._send(partition, records)
            moved: str | None = evidence if raw is not None else None
        except Exception as exc:  # noqa: BLE001 - setting aside is best effort; the count and log still happen
            detail = f"{detail}; could not set aside: {exc!r}"
            moved = None
        self.telemetry.unusable(reason, f"{self.topic}[{partition}]@{offset}/{key}", detail, moved)


def _check_key(key: str) -> None:
    if not _KEY.fullmatch(key):
        raise ValueError(f"changelog key {key!r}: use letters, digits and _ . = / : - (no '#')")
