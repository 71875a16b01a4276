"""Hypothesis strategies for hostile input: any JSON, near-miss records, garbage lines and bytes."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

EXAMPLES = settings(
    max_examples=200,  # the bar: at least 200 examples per decoder in CI
    deadline=None,  # the machine is shared; a slow example is not a failure
)

# Text that can be written as UTF-8 (no lone surrogates), including control and wide characters.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
short_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=8)

huge_ints = st.integers(min_value=10**300, max_value=10**400) | st.integers(max_value=-(10**300),
                                                                              min_value=-(10**400))
scalars = (st.none() | st.booleans() | st.integers() | huge_ints | st.floats(allow_nan=True, allow_infinity=True)
           | text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(short_text, inner, max_size=4), max_leaves=12)

# Values a field is likely to hold in real (and broken) telemetry: right type, wrong type, edge numbers.
numberish = (st.floats(allow_nan=True, allow_infinity=True) | st.integers() | huge_ints
             | st.sampled_from(["1", "1.5", "NaN", "-Inf", "+Inf", "1e999", "", " 2 ", "0x10", "true",
                                "2024-01-01T00:00:00Z", "1_000"]))
field_value = numberish | json_values


def mostly(usual: st.SearchStrategy[Any], rare: st.SearchStrategy[Any], odds: int) -> st.SearchStrategy[Any]:
    """``usual`` about ``odds`` times as often as ``rare``."""
    return st.integers(0, odds).flatmap(lambda i: rare if i == 0 else usual)


def near_miss(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with the expected keys, mostly plausible values, sometimes one key hostile or missing, plus extras.

    Biased towards almost-right records so that the decoders' deeper checks are reached, not only
    the first one that fails.
    """
    full = st.fixed_dictionaries({k: mostly(v, field_value, 8) for k, v in keys.items()})
    drop = mostly(st.just([]), st.sampled_from(sorted(keys)).map(lambda k: [k]), 6)
    extra = st.dictionaries(short_text, json_values, max_size=2)
    return st.tuples(full, drop, extra).map(
        lambda t: {**t[2], **{k: v for k, v in t[0].items() if k not in t[1]}})


timestamps = mostly(st.floats(min_value=0, max_value=2e9) | st.integers(0, 2 * 10**9),
                     st.sampled_from(["17e8", "-1", " 5 "]), 5)
long_strings = st.integers(1020, 1030).map(lambda n: "x" * n)
label_maps = mostly(
    st.dictionaries(short_text, short_text, max_size=5),
    st.dictionaries(short_text | long_strings, short_text | long_strings | json_values, max_size=4)
    | st.lists(short_text, min_size=60, max_size=70, unique=True).map(lambda ks: {k: "v" for k in ks}),
    3)
metric_objects = near_miss({
    "ts": timestamps, "name": st.sampled_from(["up", "http_requests_total", "x_bucket", ""]) | text,
    "labels": label_maps, "value": numberish,
})
log_objects = near_miss({
    "ts": timestamps, "service": st.sampled_from(["api", ""]) | text,
    "message": text, "level": st.sampled_from(["error", "INFO"]) | json_values,
})
event_objects = near_miss({
    "ts": timestamps, "type": st.sampled_from(["deploy", ""]) | text,
    "service": st.sampled_from(["api"]) | json_values, "version": json_values,
})


def dumps(value: Any) -> str:
    """JSON text for any generated value (huge ints and NaN included, as real producers emit them)."""
    return json.dumps(value, allow_nan=True)


def finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


hostile_lines = (
    st.binary(max_size=60)
    | text.map(lambda s: s.encode())
    | json_values.map(lambda v: dumps(v).encode())
    | metric_objects.map(lambda v: dumps(v).encode())
    | st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n)  # deep nesting
    | st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)
)
