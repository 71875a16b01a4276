"""Online log template miner: lines in, templates with ``<*>`` and stable ids out.

The algorithm follows Drain (He et al., "Drain: An Online Log Parsing Approach with Fixed Depth
Tree", ICWS 2017): variable tokens are masked first (:mod:`aiops.logs.masking`), lines are grouped
by token count and first token, and within a group a line joins the most similar template when at
least ``sim_threshold`` of the template's constant positions agree; positions that disagree become
``<*>``. What is added for a streaming daemon:

- **Shape cache.** Before any masking or similarity work, a line's digits are mapped to ``0`` with
  one ``bytes.translate`` and the result looked up in a dict. Every masking pattern depends only on
  where digits are, not on their values, so lines with the same shape have the same masked text
  and the same template: the common case costs one translate and one dict lookup.
- **Groups.** ``add(line, group)`` keeps lines of different groups (the stage passes the log level)
  in different templates, so an ERROR line never disappears into an INFO template.
- **Stable ids.** A template's id is a hash of its group and its first masked text; it stays the
  same when the template generalises, when another template merges into it, and across
  snapshot/restore, so downstream state keyed by id survives restarts.
- **Bounded memory.** At most ``max_templates`` templates are kept; the least recently seen is
  evicted. The shape cache is cleared when it reaches ``cache_size`` entries.

>>> m = TemplateMiner()
>>> a = m.add("connection refused to postgres:5432")
>>> b = m.add("connection refused to redis:6379")
>>> a is b, a.text
(True, 'connection refused to <*>:<*>')
>>> a.parameters("connection refused to redis:6379")
('redis', '6379')
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from typing import Any

from aiops.logs.masking import DEFAULT_PATTERNS, WILDCARD, Masker, extract_parameters

SNAPSHOT_VERSION = 1

_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


class Template:
    """One log template (a cluster of lines): its tokens, id, size and recency."""

    __slots__ = ("id", "group", "tokens", "size", "alive", "merged_into", "_text")

    def __init__(self, id: str, group: str, tokens: list[str], size: int = 0) -> None:
        self.id = id
        self.group = group
        self.tokens = tokens
        self.size = size
        self.alive = True
        self.merged_into: Template | None = None
        self._text: str | None = None

    @property
    def text(self) -> str:
        """The template as a string, variable parts written ``<*>``."""
        if self._text is None:
            self._text = " ".join(self.tokens)
        return self._text

    def parameters(self, line: str) -> tuple[str, ...]:
        """The values of this template's ``<*>`` positions in ``line`` (empty if it does not match)."""
        return extract_parameters(self.text, line)

    def __repr__(self) -> str:
        return f"Template({self.id!r}, {self.text!r}, size={self.size})"


_PART_SPLIT = re.compile(r"([^\w\x00]+)")


def merge_tokens(a: str, b: str) -> str:
    """The most specific token that covers ``a`` and ``b``: differing parts become ``<*>``.

    Tokens with the same punctuation skeleton are merged part by part, so ``postgres:<*>`` and
    ``redis:<*>`` give ``<*>:<*>`` (the host varies, the port stays a separate parameter);
    anything else becomes a single ``<*>``.

    >>> merge_tokens("postgres:<*>", "redis:<*>"), merge_tokens("a=1", "b")
    ('<*>:<*>', '<*>')
    """
    if a == WILDCARD or b == WILDCARD:
        return WILDCARD
    pa = _PART_SPLIT.split(a.replace(WILDCARD, "\x00"))
    pb = _PART_SPLIT.split(b.replace(WILDCARD, "\x00"))
    if len(pa) != len(pb) or len(pa) == 1:
        return WILDCARD
    out = []
    for i, (x, y) in enumerate(zip(pa, pb)):
        if i % 2:  # a separator: the skeletons must agree
            if x != y:
                return WILDCARD
            out.append(x)
        else:
            out.append(x if x == y else "\x00")
    merged = "".join(out).replace("\x00", WILDCARD)
    return merged


def stable_id(namespace: str, group: str, masked: str) -> str:
    """The id of a template first seen as ``masked``: same inputs, same id, on every run.

    >>> stable_id("api", "ERROR", "timeout after <*>") == stable_id("api", "ERROR", "timeout after <*>")
    True
    """
    digest = hashlib.blake2b(f"{namespace}\x00{group}\x00{masked}".encode("utf-8", "replace"), digest_size=6)
    return "t" + digest.hexdigest()


class TemplateMiner:
    """Cluster log lines into templates online (see the module docstring for the method).

    Parameters: ``sim_threshold`` share of constant positions that must agree to join a template;
    ``max_templates`` cap (least recently seen evicted); ``namespace`` is mixed into template ids
    (the stage passes the service); ``patterns`` the masking patterns; ``cache_size`` the shape
    cache bound.
    """

    def __init__(
        self,
        *,
        sim_threshold: float = 0.5,
        max_templates: int = 2000,
        namespace: str = "",
        patterns: tuple[tuple[str, str], ...] = DEFAULT_PATTERNS,
        cache_size: int = 50_000,
    ) -> None:
        self.sim_threshold = sim_threshold
        self.max_templates = max_templates
        self.namespace = namespace
        self.patterns = tuple(patterns)
        self.cache_size = cache_size
        self._masker = Masker(self.patterns)
        self._cache: dict[str, dict[bytes, Template]] = {}
        self._buckets: dict[tuple[str, int, str], list[Template]] = {}
        self._lru: OrderedDict[str, Template] = OrderedDict()
        self.evicted = 0

    # -- the hot path ------------------------------------------------------------------------
    def add(self, line: str, group: str = "") -> Template:
        """Learn ``line`` and return its template (possibly new, possibly just generalised)."""
        cache = self._cache.get(group)
        if cache is None:
            cache = self._cache[group] = {}
        key = line.encode("utf-8", "surrogatepass").translate(_DIGITS_TO_ZERO)
        tpl = cache.get(key)
        if tpl is not None:
            if not tpl.alive:
                tpl = self._resolve(tpl)
            if tpl is not None:
                tpl.size += 1
                self._lru.move_to_end(tpl.id)
                return tpl
        tpl = self._learn(self._masker.mask(line), group)
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[key] = tpl
        return tpl

    def match(self, line: str, group: str = "") -> Template | None:
        """The template ``line`` belongs to, without learning anything (None when there is none)."""
        tokens = self._masker.mask(line).split()
        best = self._best(self._buckets.get(self._bucket_key(group, tokens), ()), tokens)
        return best

    # -- learning ----------------------------------------------------------------------------
    @staticmethod
    def _bucket_key(group: str, tokens: list[str]) -> tuple[str, int, str]:
        first = tokens[0] if tokens else ""
        if WILDCARD in first:
            first = WILDCARD
        return (group, len(tokens), first)

    def _best(self, candidates: Any, tokens: list[str]) -> Template | None:
        best: Template | None = None
        best_sim = -1.0
        best_params = -1
        n = len(tokens)
        if n == 0:
            return candidates[0] if candidates else None
        for tpl in candidates:
            same = params = 0
            for a, b in zip(tpl.tokens, tokens):
                if a == WILDCARD:
                    params += 1
                elif a == b:
                    same += 1
            sim = same / n
            if sim > best_sim or (sim == best_sim and params > best_params):
                best, best_sim, best_params = tpl, sim, params
        if best is not None and best_sim >= self.sim_threshold:
            return best
        return None

    def _learn(self, masked: str, group: str) -> Template:
        tokens = masked.split()
        bkey = self._bucket_key(group, tokens)
        bucket = self._buckets.get(bkey)
        if bucket is None:
            bucket = self._buckets[bkey] = []
        tpl = self._best(bucket, tokens)
        if tpl is not None:
            old = tpl.tokens
            if old != tokens:
                new = [a if a == b else merge_tokens(a, b) for a, b in zip(old, tokens)]
                if new != old:
                    tpl.tokens = new
                    tpl._text = None
            tpl.size += 1
            self._lru.move_to_end(tpl.id)
            return tpl
        tpl = Template(stable_id(self.namespace, group, masked), group, tokens, 1)
        existing = self._lru.get(tpl.id)
        if existing is not None:
            # Same first text as a live template in another bucket cannot happen (same text, same
            # bucket); keep ids unique anyway.
            tpl.id = stable_id(self.namespace, group, masked + f"\x00{len(self._lru)}")
        bucket.append(tpl)
        self._lru[tpl.id] = tpl
        while len(self._lru) > self.max_templates:
            self._evict()
        return tpl

    def _evict(self) -> None:
        _id, old = self._lru.popitem(last=False)
        old.alive = False
        self.evicted += 1
        bkey = self._bucket_key(old.group, old.tokens)
        bucket = self._buckets.get(bkey)
        if bucket is not None:
            try:
                bucket.remove(old)
            except ValueError:
                pass
            if not bucket:
                del self._buckets[bkey]

    @staticmethod
    def _resolve(tpl: Template) -> Template | None:
        while tpl.merged_into is not None:
            tpl = tpl.merged_into
        return tpl if tpl.alive else None

    # -- inspection and state ----------------------------------------------------------------
    def templates(self) -> list[Template]:
        """Live templates, least recently seen first."""
        return list(self._lru.values())

    def get(self, template_id: str) -> Template | None:
        return self._lru.get(template_id)

    def __len__(self) -> int:
        return len(self._lru)

    def snapshot(self) -> dict[str, Any]:
        """Plain, JSON-able state (templates in recency order); the shape cache is rebuilt lazily."""
        return {
            "version": SNAPSHOT_VERSION,
            "sim_threshold": self.sim_threshold,
            "max_templates": self.max_templates,
            "namespace": self.namespace,
            "evicted": self.evicted,
            "templates": [[t.id, t.group, t.tokens, t.size] for t in self._lru.values()],
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any], **overrides: Any) -> TemplateMiner:
        """Rebuild a miner from :meth:`snapshot` output; keyword arguments override saved settings."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported miner snapshot version {data.get('version')!r}")
        kwargs: dict[str, Any] = {
            "sim_threshold": data["sim_threshold"],
            "max_templates": data["max_templates"],
            "namespace": data["namespace"],
        }
        kwargs.update(overrides)
        miner = cls(**kwargs)
        miner.evicted = int(data.get("evicted", 0))
        for tid, group, tokens, size in data["templates"]:
            tpl = Template(str(tid), str(group), [str(t) for t in tokens], int(size))
            miner._buckets.setdefault(cls._bucket_key(tpl.group, tpl.tokens), []).append(tpl)
            miner._lru[tpl.id] = tpl
        while len(miner._lru) > miner.max_templates:
            miner._evict()
        return miner
