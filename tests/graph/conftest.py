from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from circuits.graph import Graph, GraphStructure

DATA = Path(__file__).parent / "data"
MIB_FILE = DATA / "ioi-eap-ig.json"


@dataclass
class FakeModel:
    """What Graph.load(model=...) needs from a CircuitModel."""

    structure: GraphStructure
    name: str


@pytest.fixture(scope="session")
def mib_file() -> Path:
    return MIB_FILE


@pytest.fixture(scope="session")
def fake_model() -> type[FakeModel]:
    return FakeModel


@pytest.fixture(scope="session")
def mib_doc() -> dict:
    with open(MIB_FILE) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def mib_graph() -> Graph:
    return Graph.load(MIB_FILE)


@pytest.fixture
def gpt2() -> GraphStructure:
    return GraphStructure(n_layers=12, n_heads=12, d_model=768)
