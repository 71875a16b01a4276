"""Hostile rules files: the shipped rules with one value replaced by anything, or random text.

``parse_rules`` must return rules or raise ``RulesError`` (with a file and line); the detector
overrides loader must return overrides or raise ``OverrideError``. Nothing else may escape.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from aiops.decide.rules import RulesError, parse_rules
from aiops.detect.overrides import OverrideError, parse_overrides
from tests.properties.strategies import EXAMPLES, json_values, mostly, text

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"
SHIPPED = {p.name: p.read_text(encoding="utf-8") for p in sorted(RULES_DIR.glob("*.yaml"))
           if p.name not in ("detectors.yaml", "actions.yaml")}  # those two have their own loaders
DETECTORS = (RULES_DIR / "detectors.yaml").read_text(encoding="utf-8")

hostile = json_values | st.sampled_from([None, "", "[", "{service}", "{nope}", -1, 10**400, math.inf, math.nan,
                                         True, [], {}, "x" * 300, "*", "**/[!"])


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    doc = copy.deepcopy(doc)
    node = doc
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return doc


def _mutated(source: str) -> st.SearchStrategy[str]:
    doc = yaml.safe_load(source)
    paths = _paths(doc)
    return st.tuples(st.sampled_from(paths), hostile, st.booleans()).map(
        lambda t: _dump(_replace(doc, t[0], t[1]), rename=t[2] and bool(t[0]) and isinstance(t[0][-1], str)))


def _dump(doc: Any, rename: bool = False) -> str:
    try:
        out = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except (yaml.YAMLError, ValueError):
        return "alerts: [unclosed"
    return out.replace(": ", "_typo: ", 1) if rename else out


@EXAMPLES
@given(data=st.data())
def test_rules_files_are_valid_or_refused_with_a_line(data: st.DataObject) -> None:
    files = dict(SHIPPED)
    name = data.draw(st.sampled_from(sorted(files)))
    files[name] = data.draw(mostly(_mutated(SHIPPED[name]), text | st.sampled_from(["[" * 600, "a: &x [*x]",
                                                                                  "!!python/object:os.system {}"]),
                                   6))
    try:
        rules = parse_rules(files)
    except RulesError as exc:
        assert str(exc), "an error must say what and where"
        return
    assert rules.alerts is not None


@EXAMPLES
@given(spec=mostly(_mutated(DETECTORS), text | st.sampled_from(["[" * 600, "overrides: 5", "overrides: [[]]"]), 6))
def test_detector_overrides_are_valid_or_refused(spec: str) -> None:
    try:
        overrides = parse_overrides(spec, "detectors.yaml")
    except OverrideError as exc:
        assert str(exc).startswith("detectors.yaml")
        return
    assert isinstance(overrides, list)
