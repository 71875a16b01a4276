"""Online log template miner: lines in, templates with ``<*>`` and stable ids out.

The skeleton is Drain (He et al., "Drain: An Online Log Parsing Approach with Fixed Depth Tree",
ICWS 2017): variable tokens are masked first (:mod:`aiops.logs.masking`), lines are bucketed by
token count and first token (an identifier or masked first token goes to a shared ``<*>`` bucket),
and within a bucket a line joins the most similar template when at least ``sim_threshold`` of its
positions agree or are wildcards (and at least one agrees); disagreeing positions are generalised,
part by part (``postgres:<*>`` + ``redis:<*>`` -> ``<*>:<*>``). Changes to the matching, each
because of an error class of plain Drain:

- **Plain words must agree.** Two different plain words at one position (``Paused``/``Resumed``,
  ``GET``/``POST``, ``user=root``/``user=guest``), or a word against a masked value, make two
  events; only identifiers (dotted, underscored, path-like) and masked tokens may differ.
- **Sibling merge.** A word position *is* variable once ``sibling_merge`` templates (4) differ only
  there, in a line with more than ``sibling_context`` other words (user names, service names):
  those templates merge into the oldest, whose id survives (``merges`` lists them for the stage).
- **Absorption.** When a template generalises, templates of its bucket it now covers merge into it.
- **Crowded buckets.** A bucket that still reaches ``crowded_bucket`` templates has free-text
  words: there words only lower the similarity, as in Drain, so the bucket stops growing.
- **Lists.** Repeats of one masked token collapse (``blk_<*> blk_<*> ...`` -> ``blk_<*>``).

For a streaming daemon:

- **Shape caches.** Before any masking or similarity work, a line's digits are mapped to ``0`` with
  one ``bytes.translate`` and the result looked up in a dict. Every masking pattern depends only on
  where digits are, not on their values, so lines with the same shape have the same masked text
  and the same template: the common case costs one translate and one dict lookup. On a miss, the
  masked text is looked up in a second dict, so an exact masked-shape hit skips the tree too.
- **Groups.** ``add(line, group)`` keeps lines of different groups (the stage passes the log level)
  in different templates, so an ERROR line never disappears into an INFO template.
- **Stable ids.** A template's id is a hash of its group and its first masked text; it stays the
  same when the template generalises, when another template merges into it, and across
  snapshot/restore, so downstream state keyed by id survives restarts.
- **Bounded memory.** At most ``max_templates`` templates are kept; the least recently seen is
  evicted. Each shape cache is cleared when it reaches ``cache_size`` entries.

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
from collections import OrderedDict, deque
from typing import Any

from aiops.logs.masking import DEFAULT_PATTERNS, WILDCARD, Masker, extract_parameters

SNAPSHOT_VERSION = 1

_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")


class Template:
    """One log template (a cluster of lines): its tokens, id, size and recency."""

    __slots__ = ("id", "group", "tokens", "kinds", "size", "seq", "alive", "merged_into", "_text", "_bkey", "_skeys")

    def __init__(self, id: str, group: str, tokens: list[str], size: int = 0, seq: int = 0) -> None:
        self.id = id
        self.group = group
        self.tokens = tokens
        self.kinds: list[int] = []  # token_kind of each token, set when indexed
        self.size = size
        self.seq = seq
        self.alive = True
        self.merged_into: Template | None = None
        self._text: str | None = None
        self._bkey: tuple[str, int, str] | None = None
        self._skeys: list[tuple[str, int, int, int, int]] = []

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
    for i, (x, y) in enumerate(zip(pa, pb, strict=False)):
        if i % 2:  # a separator: the skeletons must agree
            if x != y:
                return WILDCARD
            out.append(x)
        else:
            out.append(x if x == y else "\x00")
    merged = "".join(out).replace("\x00", WILDCARD)
    return merged


def _collapse_runs(tokens: list[str]) -> list[str]:
    """Repeats of one masked token become one (``blk_<*> blk_<*> blk_<*>`` -> ``blk_<*>``): a list
    of values of any length is one parameter, so lines with lists of different lengths agree."""
    out = [tokens[0]]
    for t in tokens[1:]:
        if t != out[-1] or WILDCARD not in t:
            out.append(t)
    return out


VAR, WORD, IDENT = 0, 1, 2
_WORD = re.compile(r"[(\[{'\"]*(?:[A-Za-z]+=)?[A-Za-z]+[)\]}'\":;,.!?]*|[A-Za-z]+=|[^\w\s]+")


def token_kind(token: str) -> int:
    """``VAR`` if the token holds a masked part, ``WORD`` for a plain word (also ``key=word``, pure punctuation),
    ``IDENT`` for anything else (dotted, underscored, camel-case or path-like identifiers).

    Plain words name *what* happened and two different ones make two events; identifiers are
    what an event happened *to* and may vary within one template.

    >>> [token_kind(t) for t in ("Resumed", "(Lifecycle", "****", "user=root", "com.apple.x:", "root_domain",
    ...                          "blk_<*>")]
    [1, 1, 1, 1, 2, 2, 0]
    """
    if WILDCARD in token:
        return VAR
    return WORD if _WORD.fullmatch(token) else IDENT


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
        sibling_merge: int = 4,
        max_sibling_tokens: int = 200,
        strict_words: bool = True,
        sibling_context: int = 3,
        ident_first_wild: bool = True,
        crowded_bucket: int = 64,
        absorb: bool = True,
    ) -> None:
        self.sim_threshold = sim_threshold
        self.max_templates = max_templates
        self.namespace = namespace
        self.patterns = tuple(patterns)
        self.cache_size = cache_size
        self.sibling_merge = sibling_merge
        self.max_sibling_tokens = max_sibling_tokens
        self.strict_words = strict_words
        self.sibling_context = sibling_context
        self.ident_first_wild = ident_first_wild
        self.crowded_bucket = crowded_bucket
        self.absorb = absorb
        self._masker = Masker(self.patterns)
        self._cache: dict[str, dict[bytes, Template]] = {}
        self._masked_cache: dict[str, dict[str, Template]] = {}
        self._buckets: dict[tuple[str, int, str], list[Template]] = {}
        self._siblings: dict[tuple[str, int, int, int, int], list[Template]] = {}
        self._seq = 0
        self._kinds: dict[str, int] = {}
        self.merges: deque[tuple[str, str]] = deque(maxlen=10_000)  # (merged id, into id), for the stage
        self._lru: OrderedDict[str, Template] = OrderedDict()
        self.evicted = 0
        self._alias: dict[str, str] = {}  # id of a template merged away -> id it merged into

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
        masked = self._masker.mask(line)
        # Second level: lines that differ in more than digits (hex ids, host names) but mask to
        # the same text skip the tree as well.
        mcache = self._masked_cache.get(group)
        if mcache is None:
            mcache = self._masked_cache[group] = {}
        tpl = mcache.get(masked)
        if tpl is not None and not tpl.alive:
            tpl = self._resolve(tpl)
        if tpl is not None:
            tpl.size += 1
            self._lru.move_to_end(tpl.id)
        else:
            tpl = self._learn(masked, group)
            if len(mcache) >= self.cache_size:
                mcache.clear()
            mcache[masked] = tpl
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[key] = tpl
        return tpl

    def match(self, line: str, group: str = "") -> Template | None:
        """The template ``line`` belongs to, without learning anything (None when there is none)."""
        return self._best(group, self._masker.mask(line).split())

    # -- learning ----------------------------------------------------------------------------
    def _bucket_key(self, group: str, tokens: list[str]) -> tuple[str, int, str]:
        first = tokens[0] if tokens else ""
        if self.ident_first_wild and (WILDCARD in first or self._kind(first) != WORD):
            first = WILDCARD
        elif WILDCARD in first:
            first = WILDCARD
        return (group, len(tokens), first)

    def _best(self, group: str, tokens: list[str]) -> Template | None:
        """The most similar template of the line's bucket (and of its wildcard-first bucket)."""
        n = len(tokens)
        bkey = self._bucket_key(group, tokens)
        candidates = self._buckets.get(bkey, ())
        if bkey[2] != WILDCARD:
            other = self._buckets.get((group, n, WILDCARD))
            if other:
                candidates = [*candidates, *other]
        if not candidates:
            return None
        if n == 0:
            return candidates[0]
        kind = self._kind
        kinds = [kind(t) for t in tokens]
        # A crowded bucket means its words vary after all (two free-text positions, say): there
        # words only lower the similarity, as in Drain, and the bucket stops growing.
        strict = len(candidates) < self.crowded_bucket
        strict_words = self.strict_words
        best: Template | None = None
        best_sim = -1.0
        best_params = -1
        for tpl in candidates:
            same = params = 0
            for a, b, ka, kb in zip(tpl.tokens, tokens, tpl.kinds, kinds, strict=False):
                if a == b:
                    same += 1
                elif a == WILDCARD:
                    params += 1
                elif strict and ka < 2 and kb < 2 and (ka or kb) and (strict_words or ka and kb):
                    # A plain word against another word (or, strictly, against a masked value):
                    # different events (Resumed/Paused, GET/POST), unless enough sibling templates
                    # prove the position variable (see _merge_siblings).
                    break
            else:
                sim = same / n
                if sim > best_sim or (sim == best_sim and params > best_params):
                    best, best_sim, best_params = tpl, sim, params
        # At least one token must agree: a template of wildcards alone is no evidence.
        if best is not None and best_sim > 0 and (best_sim + best_params / n) >= self.sim_threshold:
            return best
        return None

    def _kind(self, token: str) -> int:
        kind = self._kinds.get(token)
        if kind is None:
            if len(self._kinds) > 20_000:
                self._kinds.clear()
            kind = self._kinds[token] = token_kind(token)
        return kind

    def _learn(self, masked: str, group: str) -> Template:
        tokens = masked.split()
        if len(tokens) > 1:
            tokens = _collapse_runs(tokens)
        tpl = self._best(group, tokens)
        if tpl is not None:
            old = tpl.tokens
            if old != tokens:
                new = [a if a == b else merge_tokens(a, b) for a, b in zip(old, tokens, strict=False)]
                if new != old:
                    self._retokenise(tpl, new)
                    tpl = self._resolve(tpl) or tpl
                    if self.absorb:
                        tpl = self._absorb(tpl)
            tpl.size += 1
            self._lru.move_to_end(tpl.id)
            return tpl
        self._seq += 1
        tpl = Template(stable_id(self.namespace, group, masked), group, tokens, 1, self._seq)
        if tpl.id in self._lru:
            tpl.id = stable_id(self.namespace, group, masked + f"\x00{self._seq}")
        self._lru[tpl.id] = tpl
        self._index(tpl)
        while len(self._lru) > self.max_templates:
            self._evict()
        return self._resolve(tpl) or tpl

    def _retokenise(self, tpl: Template, tokens: list[str]) -> None:
        self._unindex(tpl)
        tpl.tokens = tokens
        tpl._text = None
        self._index(tpl)

    def _index(self, tpl: Template) -> None:
        """Put ``tpl`` in its bucket and the sibling index, then merge siblings if there are enough."""
        bkey = self._bucket_key(tpl.group, tpl.tokens)
        tpl._bkey = bkey
        self._buckets.setdefault(bkey, []).append(tpl)
        tokens = tpl.tokens
        kind = self._kind
        tpl.kinds = [kind(t) for t in tokens]
        n = len(tokens)
        if n > self.max_sibling_tokens or self.sibling_merge < 2:
            return
        # Key of "this template with position i left out", from prefix and suffix hashes: O(n).
        prefix = [0] * (n + 1)
        for i, t in enumerate(tokens):
            prefix[i + 1] = hash((prefix[i], t))
        suffix = [0] * (n + 1)
        for i in range(n - 1, -1, -1):
            suffix[i] = hash((tokens[i], suffix[i + 1]))
        keys = tpl._skeys = []
        merge_at = -1
        words = [i for i, k in enumerate(tpl.kinds) if k == WORD]
        # A word is judged variable only against a context of other words: with too little of it
        # (a one-word line, "boot (command <*>)") the word *is* the event.
        can_merge = len(words) > self.sibling_context
        for i, t in enumerate(tokens):
            if WILDCARD in t:
                continue
            key = (tpl.group, n, i, prefix[i], suffix[i + 1])
            keys.append(key)
            sibs = self._siblings.setdefault(key, [])
            sibs.append(tpl)
            if merge_at < 0 and can_merge and len(sibs) >= self.sibling_merge:
                merge_at = i
        if merge_at >= 0:
            self._merge_siblings(tpl, merge_at)

    def _unindex(self, tpl: Template) -> None:
        bkey = tpl._bkey
        if bkey is not None:
            bucket = self._buckets.get(bkey)
            if bucket is not None:
                try:
                    bucket.remove(tpl)
                except ValueError:
                    pass
                if not bucket:
                    del self._buckets[bkey]
            tpl._bkey = None
        for key in tpl._skeys:
            sibs = self._siblings.get(key)
            if sibs is not None:
                try:
                    sibs.remove(tpl)
                except ValueError:
                    pass
                if not sibs:
                    del self._siblings[key]
        tpl._skeys = []

    def _merge_siblings(self, tpl: Template, i: int) -> None:
        """Templates equal but for one word position, with enough variants there: one template."""
        key = (tpl.group, len(tpl.tokens), i)
        sibs = [s for s in self._siblings.get(next(k for k in tpl._skeys if k[:3] == key), ())
                if s.tokens[:i] == tpl.tokens[:i] and s.tokens[i + 1:] == tpl.tokens[i + 1:]]
        if len(sibs) < 2:
            return
        tokens = list(tpl.tokens)
        tokens[i] = WILDCARD
        self._merge(sibs, tokens)

    def _absorb(self, tpl: Template) -> Template:
        """After ``tpl`` generalised, templates of its bucket that it now covers merge into it."""
        tokens = tpl.tokens
        covered = [tpl]
        for other in self._buckets.get(tpl._bkey, ()) if tpl._bkey is not None else ():
            if other is not tpl and all(a == b or a == WILDCARD or (WILDCARD in a and merge_tokens(a, b) == a)
                                        for a, b in zip(tokens, other.tokens, strict=False)):
                covered.append(other)
        if len(covered) == 1:
            return tpl
        return self._merge(covered, list(tokens))

    def _merge(self, templates: list[Template], tokens: list[str]) -> Template:
        """Merge ``templates`` into the oldest one (whose id survives), which gets ``tokens``."""
        keeper = min(templates, key=lambda s: s.seq)
        for other in templates:
            if other is keeper or not other.alive:
                continue
            self._unindex(other)
            other.alive = False
            other.merged_into = keeper
            self._lru.pop(other.id, None)
            self._alias[other.id] = keeper.id
            if len(self._alias) > 10 * self.max_templates:
                del self._alias[next(iter(self._alias))]
            self.merges.append((other.id, keeper.id))
            keeper.size += other.size
        self._retokenise(keeper, tokens)
        return self._resolve(keeper) or keeper

    def _evict(self) -> None:
        _id, old = self._lru.popitem(last=False)
        old.alive = False
        self.evicted += 1
        self._unindex(old)

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
        """The live template with this id (None if it was evicted or merged away)."""
        return self._lru.get(template_id)

    def final(self, template_id: str) -> Template:
        """The live template that lines once given ``template_id`` belong to now (after merges)."""
        tpl = self._lru.get(template_id)
        if tpl is not None:
            return tpl
        seen = 0
        while template_id in self._alias and seen < 64:
            template_id = self._alias[template_id]
            seen += 1
        tpl = self._lru.get(template_id)
        if tpl is None:
            raise KeyError(template_id)
        return tpl

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
            "sibling_merge": self.sibling_merge,
            "seq": self._seq,
            "templates": [[t.id, t.group, t.tokens, t.size, t.seq] for t in self._lru.values()],
            "aliases": list(self._alias.items()),
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
            "sibling_merge": data["sibling_merge"],
        }
        kwargs.update(overrides)
        miner = cls(**kwargs)
        miner.evicted = int(data.get("evicted", 0))
        miner._seq = int(data["seq"])
        templates = [Template(str(tid), str(group), [str(t) for t in tokens], int(size), int(seq))
                     for tid, group, tokens, size, seq in data["templates"]]
        for tpl in templates:  # recency order
            miner._lru[tpl.id] = tpl
        for tpl in sorted(templates, key=lambda t: t.seq):  # creation order, as they were indexed
            if tpl.alive:
                miner._index(tpl)
        miner._alias = {str(a): str(b) for a, b in data.get("aliases", ())}
        while len(miner._lru) > miner.max_templates:
            miner._evict()
        return miner
