"""Shared by the plotting tests: small graphs and checks that a file is a real image of plausible size."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from circuits.graph import Graph, GraphStructure

MIB_FILE = Path(__file__).resolve().parents[1] / "graph" / "data" / "ioi-eap-ig.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path, min_bytes: int = 10_000, min_px: tuple[int, int] = (300, 300)) -> tuple[int, int]:
    """A PNG (magic bytes), readable back, at least ``min_px`` (height, width) and ``min_bytes``; its shape."""
    import matplotlib.image as mpimg

    path = Path(path)
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    size = path.stat().st_size
    assert size > min_bytes, f"{path}: {size} bytes, suspiciously small"
    assert size < 20_000_000, f"{path}: {size} bytes, suspiciously large"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] >= min_px[0] and img.shape[1] >= min_px[1], img.shape
    assert img.shape[0] <= 12_000 and img.shape[1] <= 12_000, img.shape
    # Not blank: some pixels are far from white.
    assert (np.asarray(img[..., :3]) < 0.5).mean() > 0.001
    return img.shape[0], img.shape[1]


def check_svg(path: Path, min_bytes: int = 10_000) -> ET.Element:
    """Well-formed XML whose root is an <svg> element, of plausible size."""
    path = Path(path)
    size = path.stat().st_size
    assert size > min_bytes, f"{path}: {size} bytes, suspiciously small"
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg"), root.tag
    return root


@pytest.fixture(scope="session")
def mib_graph() -> Graph:
    return Graph.load(MIB_FILE)


def scored_graph(n_layers: int = 2, n_heads: int = 4, seed: int = 0, **kwargs) -> Graph:
    """A full graph of a small structure with N(0, 1) scores."""
    st = GraphStructure(n_layers, n_heads, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    return Graph.full(st, scores=torch.randn(st.n_senders, st.n_receivers, generator=gen),
                      metadata={"method": "random", "task": "toy", "model": f"{n_layers}x{n_heads}"})


@pytest.fixture
def small_circuit() -> Graph:
    """GraphStructure(2, 4), random signed scores, the 40 best by |score| (pruned): both signs present."""
    return scored_graph().top_k(40, absolute=True)
