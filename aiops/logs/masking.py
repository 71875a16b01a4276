"""Masking of variable tokens in log lines before they are clustered into templates.

Every pattern is compiled once into a single alternation, so masking a line is one C-level
regex pass. Each match becomes ``<*>``; the text between matches is kept verbatim, so a
template reads like the original line.

What is masked (in this order, first match wins at a position):

- URLs (``scheme://...``), UUIDs, ``0x`` hex numbers;
- dates and times written out (``Sun Jul 10 03:55:21 2005``, ISO 8601): one ``<*>`` each;
- quantities with a unit (``12.5 KB``, ``250 ms``, ``3 seconds``), so that the unit may vary;
- IPv4 addresses (a following ``:port`` is masked on its own as a number);
- a single-token quoted value that is not a plain word (``'/tmp/x'``, ``"a.b-c"``): identifiers, file
  names; a quoted plain word (``'Active'``) names a state and is kept; a quoted phrase with
  spaces is kept too, its own variable tokens are masked individually;
- the value of ``key=value`` when it is an identifier (host name, path, version); a plain-word
  value such as ``user=root`` or ``state=Active`` is kept: it names what happened;
- any run of letters/digits that contains a digit (numbers, ports, durations such as ``15ms``,
  ids such as ``blk_-8123``'s number, host names like ``node-17``'s suffix): the strongest known
  cue that a token varies (He et al., Drain, ICWS 2017; Zhu et al., ICSE-SEIP 2019).

Paths are masked when they hold a digit in one of their segments (by the digit rule), not as a
whole: constant paths (``/etc/hosts``) usually name *what* happened and belong to the template.

>>> m = Masker()
>>> m.mask("connection refused to 10.1.2.3:5432 after 250ms")
'connection refused to <*>:<*> after <*>'
>>> m.mask("user=alice id=3f2a9c1e-7d1b-4a8e-9c6f-2b1d0e5a7c44 path='/tmp/x'")
'user=alice id=<*> path=<*>'
>>> m.mask("Served block blk_-6952295868487656571 to /10.251.91.84")
'Served block blk_<*> to /<*>'
"""

from __future__ import annotations

import re

WILDCARD = "<*>"

_ALNUM = "A-Za-z0-9"
# A key=value value that is an identifier (dotted, slashed, dashed, with digits: host names, paths,
# versions), up to whitespace or a separator. A plain-word value (user=root, state=Active) names
# what happened and is kept; a value with a digit anywhere is masked by the number rule too.
_KV_VALUE = r"(?<==)(?=[^\s,;&\]\)}\"'=./:\-_@]*+[./:\-_@])[^\s,;&\]\)}\"'=]+"

DEFAULT_PATTERNS: tuple[tuple[str, str], ...] = (
    ("url", r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*+://[^\s\"'<>]+"),
    ("uuid", r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"),
    ("hex", r"\b0[xX][0-9a-fA-F]+\b"),
    # Dates and times written out: the whole stamp is one variable.
    ("datetime", r"\b(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)[a-z]*,? +)?(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
                 r"[a-z]* +\d{1,2},? +(?:\d{4} +)?\d{1,2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?: +\d{4}\b)?"),
    ("isotime", r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?\b"),
    # A quantity with its unit: "12.5 KB" and "3 B" are the same parameter, as are "250 ms" and "2 s".
    ("quantity", r"(?<![\w.])-?\d+(?:\.\d+)? ?(?:[KMGTPE]i?B|B|bytes?|[mun\u00b5]s|s|secs?|seconds?|mins?|minutes?"
                 r"|h|hours?|days?)(?![\w])"),
    ("ipv4", r"(?<![0-9.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![0-9])"),
    ("quoted", r"(?<![A-Za-z0-9])(?:'(?=[^\s']*[^A-Za-z\s'])[^\s']+'|\"(?=[^\s\"]*[^A-Za-z\s\"])[^\s\"]+\")"),
    ("kv", _KV_VALUE),
    # Letters before the first digit are possessive and the start is anchored to a run boundary,
    # so a long digit-free run is scanned once: linear time even on a megabyte line.
    # A leading '-' belongs to the number (negative ids such as blk_-8123).
    ("num", rf"(?:(?<![{_ALNUM}])-)?(?<![{_ALNUM}])[A-Za-z]*+\d[{_ALNUM}]*"),
)
"""(name, regex) pairs of the default masking, most specific first. Each match must start at the
boundary of a letter/digit run: the masker tests that once, before trying the alternatives."""


class Masker:
    """Replace variable tokens of a line with ``<*>`` using pre-compiled patterns.

    ``patterns`` is a sequence of ``(name, regex)``; the default is :data:`DEFAULT_PATTERNS`.
    The same patterns can be handed to other miners (the benchmark gives them to Drain3) so that
    a comparison measures clustering, not masking.
    """

    __slots__ = ("patterns", "_regex")

    def __init__(self, patterns: tuple[tuple[str, str], ...] = DEFAULT_PATTERNS) -> None:
        self.patterns = tuple(patterns)
        # Every pattern starts at a letter/digit-run boundary; testing that once, before the
        # alternation, lets the engine skip the inside of words cheaply (about 2.5x faster).
        self._regex = re.compile(
            f"(?<![{_ALNUM}])(?:" + "|".join(f"(?:{rx})" for _name, rx in self.patterns) + ")"
        )

    def mask(self, line: str) -> str:
        """Return ``line`` with each variable token replaced by ``<*>``."""
        return self._regex.sub(WILDCARD, line)


def template_regex(template: str) -> re.Pattern[str]:
    """A regex that matches lines of ``template`` and captures each ``<*>`` as a group.

    >>> template_regex("connect to <*>:<*> failed").match("connect to db:5432 failed").groups()
    ('db', '5432')
    """
    parts = template.split(WILDCARD)
    body = "(.*?)".join(_escape_literal(p) for p in parts)
    return re.compile(rf"^\s*{body}\s*$", re.DOTALL)


def _escape_literal(part: str) -> str:
    # Whitespace in a template stands for any whitespace run in the line (lines are split on it).
    return r"\s+".join(re.escape(w) for w in part.split(" ")) if part.strip() else (r"\s*" if part else "")


def extract_parameters(template: str, line: str, limit: int = 20) -> tuple[str, ...]:
    """Values of the ``<*>`` positions of ``template`` in ``line`` (empty when it does not match).

    >>> extract_parameters("connection refused to <*>:<*>", "connection refused to postgres:5432")
    ('postgres', '5432')
    """
    if WILDCARD not in template:
        return ()
    m = template_regex(template).match(line[:4096])
    if m is None:
        return ()
    return tuple(g for g in m.groups()[:limit])
