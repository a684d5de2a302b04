"""Files a user writes or receives, damaged at random, fail with the package's own error, never another exception.

Task TOML, JSONL / CSV pairs files and graph JSON: each starts from a valid file (checked to load), is damaged by
:mod:`tests.formats.mutations`, and loaded. Loading may succeed (many edits are harmless); when it fails, the error
must be a :class:`circuits.errors.CircuitsError` (a ``TaskError``, ``GraphFormatError``, ...). Any other exception,
a KeyError or TypeError from deep inside a loader, fails the test with the file that caused it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import uuid
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from circuits.errors import CircuitsError
from circuits.graph import Graph, GraphStructure
from circuits.tasks import default_gpt2_tokenizer, load_task
from tests.formats.mutations import damaged_json, damaged_text

REPO = Path(__file__).resolve().parents[2]
# FUZZ_EXAMPLES=2000 for a long search; the default keeps the file well under a minute
SETTINGS = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,
                    derandomize=not os.environ.get("FUZZ_EXAMPLES"), suppress_health_check=[HealthCheck.too_slow])

PAIRS = [
    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupted": "When Mary and John went to the store, Paul gave a drink to", "answer": " Mary",
     "distractor": " John"},
    {"clean": "When Anna and Paul went to the park, Paul gave a book to",
     "corrupted": "When Anna and Paul went to the park, Mary gave a book to", "answer": " Anna",
     "distractor": " Paul"},
    {"clean": "The war lasted from the year 1732 to the year 17",
     "corrupted": "The war lasted from the year 1701 to the year 17", "answer": "33", "distractor": "31"},
]


def _csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@pytest.fixture(scope="module")
def tok():
    return default_gpt2_tokenizer()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("damaged")


def _write(folder: Path, text: str, suffix: str) -> Path:
    path = folder / f"{uuid.uuid4().hex}{suffix}"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return path


def _must_fail_cleanly(load, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # damaged files may load with a warning (missing edges)
        try:
            load(path)
        except CircuitsError:
            pass
        except Exception as err:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"{type(err).__name__} (not the package's error) loading:\n"
                                 f"{path.read_text(encoding='utf-8', errors='replace')[:2000]}") from err
        finally:
            path.unlink()


# ---- task TOML --------------------------------------------------------------------------------------------------
TOML_FILES = {name: (REPO / "tasks" / f"{name}.toml").read_text() for name in ("ioi", "greater-than")}


@pytest.mark.parametrize("name", sorted(TOML_FILES))
def test_the_task_files_load(name, tok):
    assert len(load_task(REPO / "tasks" / f"{name}.toml", tok, n=4)) == 4


@SETTINGS
@given(data=st.data(), name=st.sampled_from(sorted(TOML_FILES)))
def test_damaged_task_toml(data, name, tok, folder):
    text = data.draw(damaged_text(TOML_FILES[name]))
    _must_fail_cleanly(lambda p: load_task(p, tok, n=4), _write(folder, text, ".toml"))


# ---- JSONL / CSV pairs ------------------------------------------------------------------------------------------
JSONL = "\n".join(json.dumps(p) for p in PAIRS) + "\n"
CSV = _csv(PAIRS)


def test_the_pairs_files_load(tok, folder):
    for text, suffix in ((JSONL, ".jsonl"), (CSV, ".csv")):
        assert len(load_task(_write(folder, text, suffix), tok, n=None)) == 3


@SETTINGS
@given(data=st.data(), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_damaged_pairs_text(data, suffix, tok, folder):
    text = data.draw(damaged_text(JSONL if suffix == ".jsonl" else CSV))
    _must_fail_cleanly(lambda p: load_task(p, tok, n=None), _write(folder, text, suffix))


@SETTINGS
@given(data=st.data())
def test_damaged_pairs_records(data, tok, folder):
    """Valid JSON lines whose records have values of the wrong type or keys missing."""
    rows = [data.draw(damaged_json(p)) if data.draw(st.booleans()) else json.dumps(p) for p in PAIRS]
    _must_fail_cleanly(lambda p: load_task(p, tok, n=None), _write(folder, "\n".join(rows) + "\n", ".jsonl"))


# ---- graph JSON -------------------------------------------------------------------------------------------------
STRUCTURE = GraphStructure(n_layers=1, n_heads=2, parallel_attn_mlp=False, d_model=8)


@pytest.fixture(scope="module")
def graph_doc(folder):
    import torch

    scores = torch.randn(STRUCTURE.n_senders, STRUCTURE.n_receivers, generator=torch.Generator().manual_seed(0))
    path = Graph.full(STRUCTURE, scores=scores, metadata={"method": "eap"}).top_k(5).save(folder / "graph.json")
    return json.loads(path.read_text())


class _Model:
    structure = STRUCTURE
    name = "tiny"


def test_the_graph_file_loads(graph_doc, folder):
    assert Graph.load(_write(folder, json.dumps(graph_doc), ".json"), model=_Model()).n_edges > 0


@SETTINGS
@given(data=st.data(), with_model=st.booleans())
def test_damaged_graph_text(data, with_model, graph_doc, folder):
    text = data.draw(damaged_text(json.dumps(graph_doc, indent=1)))
    _must_fail_cleanly(lambda p: Graph.load(p, model=_Model() if with_model else None), _write(folder, text, ".json"))


@SETTINGS
@given(data=st.data(), with_model=st.booleans())
def test_damaged_graph_values(data, with_model, graph_doc, folder):
    text = data.draw(damaged_json(graph_doc))
    _must_fail_cleanly(lambda p: Graph.load(p, model=_Model() if with_model else None), _write(folder, text, ".json"))


def test_a_foreign_exception_fails_the_check(folder):
    def leaky(path):
        raise KeyError("score")

    with pytest.raises(AssertionError, match="KeyError"):
        _must_fail_cleanly(leaky, _write(folder, "{}", ".json"))


def test_a_cfg_larger_than_any_model_is_refused(graph_doc, folder):
    from circuits.graph import GraphFormatError

    doc = {**graph_doc, "cfg": {**graph_doc["cfg"], "n_layers": 300, "n_heads": 300}}
    with pytest.raises(GraphFormatError, match="larger than any model"):
        Graph.load(_write(folder, json.dumps(doc), ".json"))
