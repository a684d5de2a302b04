"""Hypothesis strategies that damage a valid file the way files get damaged: cut short, bytes dropped, stray
characters typed in, lines lost, and (for JSON) a value replaced by one of another type or a key removed."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# characters that matter to the formats (quotes, brackets, separators, escapes, digits, signs) and a few others
NOISE = st.text(alphabet=st.sampled_from(list('"\'[]{},=:.\n\r\t #\\-+0123456789eEnaNtrufl xyz\u00e9\u2603\x00')),
                min_size=1, max_size=6)


@st.composite
def damaged_text(draw, text: str) -> str:
    """``text`` with one to three random edits."""
    for _ in range(draw(st.integers(1, 3))):
        n = len(text)
        kind = draw(st.sampled_from(["truncate", "delete", "insert", "replace", "drop_line", "dup_line"]))
        i = draw(st.integers(0, max(n - 1, 0)))
        if kind == "truncate":
            text = text[:i]
        elif kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 20)):]
        elif kind == "insert":
            text = text[:i] + draw(NOISE) + text[i:]
        elif kind == "replace":
            text = text[:i] + draw(NOISE) + text[i + 1:]
        else:
            lines = text.split("\n")
            j = draw(st.integers(0, len(lines) - 1))
            lines[j:j + 1] = [] if kind == "drop_line" else [lines[j], lines[j]]
            text = "\n".join(lines)
    return text


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 300) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in list(doc.items())[:40]:  # the first entries are as good as all of them
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:40]):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def damaged_json(draw, doc: Any) -> str:
    """``doc`` (parsed JSON) with a value replaced or a key deleted, serialized (NaN/Infinity as Python writes)."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(JSON_VALUES)
            continue
        parent = doc
        try:
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict) and draw(st.booleans()):
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):  # an earlier edit changed the shape: keep the document
            continue
    return json.dumps(doc)
