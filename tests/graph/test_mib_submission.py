"""MIB leaderboard submissions: export round-trips, MIB's .pt layout, and the checker's rules with their messages."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from circuits.cli import main
from circuits.graph import Graph, GraphStructure
from circuits.graph.io import to_mib_pt_dict
from circuits.graph.submission import (
    MIB_FRACTIONS,
    SubmissionError,
    check_submission,
    export_submission,
    folder_name,
    validate_submission,
)

MIB_FILE = Path(__file__).resolve().parent / "data" / "ioi-eap-ig.json"


def _scored(n_layers: int, n_heads: int, seed: int) -> Graph:
    st = GraphStructure(n_layers=n_layers, n_heads=n_heads)
    gen = torch.Generator().manual_seed(seed)
    return Graph.full(st, scores=torch.randn(st.n_senders, st.n_receivers, generator=gen, dtype=torch.float64),
                      metadata={"method": "test"})


@pytest.fixture(scope="module")
def gpt2_graph() -> Graph:
    return Graph.load(MIB_FILE)


@pytest.fixture()
def submission(tmp_path, gpt2_graph) -> Path:
    """Two tasks x two models, every format: importances .json / .pt, circuits .json / .pt."""
    root = tmp_path / "submission"
    small = _scored(6, 4, seed=0)  # InterpBench's shape: 1,108 edges
    export_submission(gpt2_graph, root, task="ioi", model="gpt2")
    export_submission(gpt2_graph, root, task="mcqa", model="gpt2", kind="circuits", file_type="pt", absolute=True)
    export_submission(small, root, task="ioi", model="interpbench", file_type="pt")
    export_submission(small, root, task="arithmetic-addition", model="interpbench", kind="circuits")
    return root


def test_export_round_trips_and_passes_the_check(submission, gpt2_graph):
    assert check_submission(submission) == []
    validate_submission(submission)
    assert sorted(p.name for p in submission.iterdir()) == [
        "arithmetic-addition_interpbench", "ioi_gpt2", "ioi_interpbench", "mcqa_gpt2"]
    back = Graph.load(submission / "ioi_gpt2" / "importances.json")
    assert torch.equal(back.scores, gpt2_graph.scores)  # JSON keeps every score exactly
    small = _scored(6, 4, seed=0)
    back_pt = Graph.load(submission / "ioi_interpbench" / "importances.pt")
    assert torch.equal(back_pt.scores, small.scores.float().double())  # MIB's .pt holds float32
    # circuits: one per MIB fraction, each within it, the largest = the top 50% by |score|, pruned
    circuits = sorted(submission.glob("mcqa_gpt2/circuit_*.pt"))
    assert len(circuits) == len(MIB_FRACTIONS) == 9
    sizes = {float(p.stem.split("_")[1]): Graph.load(p).n_edges for p in circuits}
    for fraction, size in sizes.items():
        assert 0 < size <= math.floor(fraction * 32_491)
    half = Graph.load(submission / "mcqa_gpt2" / "circuit_0.5.pt")
    expected = gpt2_graph.top_k(math.floor(0.5 * 32_491), absolute=True)
    assert torch.equal(half.in_graph, expected.in_graph)
    doc = json.loads((submission / "arithmetic-addition_interpbench" / "circuit_0.1.json").read_text())
    assert set(next(iter(doc["edges"].values()))) == {"in_graph"}  # circuits carry membership, no scores


def test_mib_pt_layout(gpt2_graph):
    d = to_mib_pt_dict(gpt2_graph)
    st = gpt2_graph.structure
    assert d["src_nodes"][:3] == ["input", "a0.h0", "a0.h1"] and d["dst_nodes"][-1] == "logits"
    assert d["dst_nodes"][:2] == ["a0.h0<q>", "a0.h1<q>"] and d["dst_nodes"][12] == "a0.h0<k>"
    grid = d["edges_scores"]
    assert grid.shape == (st.n_senders, st.n_receivers) == (157, 445)
    assert bool(torch.isneginf(grid[~st.edge_mask]).all())  # no edge: -inf
    assert int(torch.isfinite(grid).sum()) == 32_491
    s, r = st.edge_index("a9.h9->logits")
    assert grid[s, r].item() == pytest.approx(gpt2_graph.score("a9.h9->logits"), rel=1e-6)
    assert int(d["edges_in_graph"].sum()) == 756


def _problems(root: Path) -> str:
    return "\n".join(check_submission(root))


def test_checker_rejects_broken_submissions_with_clear_messages(submission, gpt2_graph):
    # a missing circuit: 8 files are neither format
    (submission / "mcqa_gpt2" / "circuit_0.02.pt").unlink()
    assert "mcqa_gpt2: 8 graph files; MIB takes 1 file of importance scores or 9 circuits" in _problems(submission)
    with pytest.raises(SubmissionError, match=r"mcqa_gpt2: 8 graph files"):
        validate_submission(submission)
    shutil.rmtree(submission / "mcqa_gpt2")
    assert check_submission(submission) == []  # ioi x {gpt2, interpbench} + arithmetic-addition: still 2 x 2

    # a circuit larger than its fraction allows
    folder = submission / "arithmetic-addition_interpbench"
    small = _scored(6, 4, seed=0)
    (folder / "circuit_0.5.json").unlink()
    small.save(folder / "circuit_0.5.json")  # every edge: more than the largest slot (50%) allows
    text = _problems(submission)
    assert "circuit_0.5.json: 1,108 edges, but the circuit for 50% may have at most 554 of 1,108" in text

    # names: MIB's folder layout and its task / model names
    shutil.rmtree(folder)
    (submission / "ioi_interpbench").rename(submission / "arc_easy_interpbench")
    (submission / "ioi-gpt2").mkdir()
    text = _problems(submission)
    assert "'arc_easy' is not an MIB task; fix: rename it arc-easy_interpbench" in text
    assert "ioi-gpt2: folder names are {task}_{model}" in text
    assert "valid folders cover 1 task(s) (ioi) and 1 model(s) (gpt2); MIB needs at least 2 tasks and 2 models" in text
    with pytest.raises(SubmissionError, match=r"\(and 2 more problems\)"):
        validate_submission(submission)


def test_checker_reads_the_files(tmp_path, gpt2_graph):
    root = tmp_path / "s"
    export_submission(gpt2_graph, root, task="ioi", model="gpt2")
    small = _scored(6, 4, seed=1)
    export_submission(small, root, task="mcqa", model="interpbench", file_type="pt")
    assert check_submission(root) == []
    # an unscored edge in the importances
    path = root / "ioi_gpt2" / "importances.json"
    doc = json.loads(path.read_text())
    doc["edges"]["a9.h9->logits"]["score"] = None
    del doc["edges"]["m11->logits"]
    path.write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="missing"):
        text = _problems(root)
    assert "ioi_gpt2/importances.json: 2 of 32,491 edges have no score" in text
    # a score where the grid has no edge (e.g. a transposed or reordered grid)
    pt = root / "mcqa_interpbench" / "importances.pt"
    d = torch.load(pt, weights_only=True)
    s, r = small.structure.sender_index("m5"), small.structure.receiver_index("a0.h0<q>")
    d["edges_scores"][s, r] = 0.5
    torch.save(d, pt)
    assert "first: m5 -> a0.h0<q> = 0.5" in _problems(root)
    # a graph of another model's shape in a folder
    shutil.rmtree(root / "mcqa_interpbench")
    (root / "mcqa_interpbench").mkdir()
    gpt2_graph.save(root / "mcqa_interpbench" / "importances.json")
    assert "MIB's interpbench has 6 x 4 (1,108 edges)" in _problems(root)
    # not a graph at all
    (root / "mcqa_interpbench" / "importances.json").write_text("{oops")
    assert "cannot be read as an MIB graph" in _problems(root)


def test_export_refuses_what_mib_would_refuse(tmp_path, gpt2_graph):
    with pytest.raises(SubmissionError, match="use 'arithmetic-addition'"):
        folder_name("arithmetic_addition", "gpt2")
    with pytest.raises(SubmissionError, match="not an MIB model"):
        export_submission(gpt2_graph, tmp_path, task="ioi", model="gpt-2")
    with pytest.raises(SubmissionError, match="MIB's qwen2.5 has 24 x 14 \\(179,749 edges\\)"):
        export_submission(gpt2_graph, tmp_path, task="ioi", model="qwen2.5")
    unscored = gpt2_graph.copy()
    s, r = unscored.structure.edge_index("a0.h0->m0")
    unscored.scores[s, r] = math.nan
    with pytest.raises(SubmissionError, match="1 of 32,491 edges have no score"):
        export_submission(unscored, tmp_path, task="ioi", model="gpt2")


def test_command_line(tmp_path, capsys):
    root = tmp_path / "sub"
    assert main(["export-mib", str(MIB_FILE), "--task", "ioi", "--model", "gpt2", "--out", str(root)]) == 0
    assert "MIB needs at least 2 tasks and 2 models" in capsys.readouterr().out
    assert main(["check-mib", str(root)]) == 1
    assert "MIB would not count this submission" in capsys.readouterr().out
    assert main(["check-mib", str(root), "--min-models", "1", "--min-tasks", "1"]) == 0
    assert main(["export-mib", str(MIB_FILE), "--task", "ioi", "--model", "llama3", "--out", str(root)]) == 2
    assert "MIB's llama3 has 32 x 32 (1,592,881 edges)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["export-mib", "check-mib", "view"])
def test_help_has_examples(command, capsys):
    from circuits.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    assert "examples:" in capsys.readouterr().out
