"""The template miner: clustering, merging, stable ids, eviction, bounded memory."""

from __future__ import annotations

import json
import random
import string

from aiops.logs.miner import TemplateMiner, merge_tokens, stable_id


def test_lines_differing_in_variables_share_a_template() -> None:
    m = TemplateMiner()
    a = m.add("Received block blk_123 of size 67108864 from /10.250.19.102")
    b = m.add("Received block blk_-99 of size 1024 from /10.251.91.84")
    c = m.add("Deleting block blk_123 file /data/blk_123")
    assert a is b and c is not a
    assert a.text == "Received block blk_<*> of size <*> from /<*>"
    assert a.size == 2


def test_different_plain_words_are_different_events_until_the_position_proves_variable() -> None:
    m = TemplateMiner()
    states = ["Resumed", "Paused", "Started"]
    ids = {m.add(f"[instance: {i}] VM {s} (Lifecycle Event)").id for i, s in enumerate(states)}
    assert len(ids) == 3  # GET/POST, Paused/Resumed: the word is the event
    # ... but a word position that keeps taking new values in an otherwise fixed line is a variable
    m2 = TemplateMiner()
    users = ["alice", "bob", "carol", "dave", "erin", "frank"]
    tpls = [m2.add(f"session opened for user {u} by login service") for u in users]
    final = {m2.final(t.id).id for t in tpls}
    assert len(final) == 1
    assert m2.final(tpls[0].id).text == "session opened for user <*> by login service"
    assert m2.final(tpls[0].id).id == tpls[0].id  # the oldest id survives the merge
    assert len(m2) == 1
    assert [m for m in m2.merges] and all(into == tpls[0].id for _gone, into in m2.merges)


def test_identifiers_generalise_like_drain() -> None:
    m = TemplateMiner()
    a = m.add("connection refused to postgres:5432")
    b = m.add("connection refused to redis:6379")
    assert a is b and a.text == "connection refused to <*>:<*>"
    assert a.parameters("connection refused to redis.cache:6379") == ("redis.cache", "6379")
    assert m.add("connection refused to redis.cache:6379") is a  # a different shape still joins


def test_lists_of_any_length_are_one_parameter() -> None:
    m = TemplateMiner()
    a = m.add("ask 10.0.0.1:50010 to delete blk_1 blk_2")
    b = m.add("ask 10.0.0.2:50010 to delete blk_1 blk_2 blk_3 blk_4 blk_5")
    assert a is b


def test_groups_are_kept_apart() -> None:
    m = TemplateMiner()
    assert m.add("request failed", "ERROR") is not m.add("request failed", "INFO")


def test_merge_tokens() -> None:
    assert merge_tokens("a:<*>", "b:<*>") == "<*>:<*>"
    assert merge_tokens("x", "y") == "<*>"
    assert merge_tokens("a.b", "a.c") == "a.<*>"


def test_ids_are_stable_across_runs_and_snapshot_restore() -> None:
    lines = [f"job {i} finished in {i * 3} ms on worker-{i % 4}" for i in range(50)]
    lines += [f"lease for {w} expired" for w in ("alpha", "beta", "gamma", "delta", "eps")]
    m1, m2 = TemplateMiner(namespace="api"), TemplateMiner(namespace="api")
    ids1 = [m1.add(x).id for x in lines]
    ids2 = [m2.add(x).id for x in lines]
    assert ids1 == ids2
    assert ids1[0] == stable_id("api", "", "job <*> finished in <*> on worker-<*>")
    assert TemplateMiner(namespace="db").add(lines[0]).id != ids1[0]  # per service

    restored = TemplateMiner.from_snapshot(json.loads(json.dumps(m1.snapshot())))
    more = [f"job {i} finished in 5 ms on worker-1" for i in range(3)] + ["lease for zeta expired", "new thing"]
    assert [restored.add(x).id for x in more] == [m1.add(x).id for x in more]
    assert [t.text for t in restored.templates()] == [t.text for t in m1.templates()]


def test_cap_evicts_least_recently_seen() -> None:
    m = TemplateMiner(max_templates=10)
    keep = m.add("heartbeat ok")
    for i in range(100):
        m.add(f"event {string.ascii_letters[i % 52]}{string.ascii_letters[i // 52]} happened")
        m.add("heartbeat ok")  # recently seen: never evicted
        assert len(m) <= 10
    assert m.get(keep.id) is keep and m.evicted >= 90


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))


def test_memory_stays_bounded_on_a_high_cardinality_stream() -> None:
    """Templates, shape cache and indexes stay bounded when every line brings new tokens.

    The unit test feeds 30k lines with a small cap to stay fast; ``bench/loghub.py --stream N``
    runs the same kind of stream at 1M lines and reports memory.
    """
    rng = random.Random(0)
    m = TemplateMiner(max_templates=200, cache_size=2_000)
    for i in range(30_000):
        r = rng.random()
        if r < 0.4:
            line = f"GET /api/orders/{rng.getrandbits(40)} 200 in {rng.randint(1, 999)}ms"
        elif r < 0.6:
            line = f"user {_word(rng)} logged in from {_word(rng)}.example.com session {rng.getrandbits(64):x}"
        elif r < 0.8:
            line = f"request trace {_word(rng)} span {_word(rng)} status ok"
        else:
            line = " ".join(_word(rng) for _ in range(rng.randint(2, 10)))  # free text: all new
        m.add(line)
        if i % 5_000 == 0:
            assert len(m) <= 200
    assert len(m) <= 200 and m.evicted > 1000
    assert sum(len(c) for c in m._cache.values()) <= 2_000
    assert sum(len(c) for c in m._masked_cache.values()) <= 2_000
    n_tokens = sum(len(t.tokens) for t in m.templates())
    assert sum(len(v) for v in m._siblings.values()) <= n_tokens
    assert sum(len(v) for v in m._buckets.values()) == len(m)
    texts = {t.text for t in m.templates()}
    assert "user <*> logged in from <*>.example.com session <*>" in texts
    assert "request trace <*> span <*> status ok" in texts


def test_huge_line() -> None:
    m = TemplateMiner()
    t = m.add("x " * 300_000)
    assert m.add("x " * 300_000) is t
