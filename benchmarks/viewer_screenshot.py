"""The viewer on a bundled model's circuit: EAP-IG on zoo:planted-ioi, every edge scored, with its minimal 90% circuit
(ranked by |score|) as the file's circuit and its faithfulness measured; written as
results/viewer/planted-ioi_eap-ig.html and a headless-Chromium screenshot results/viewer/planted-ioi_eap-ig.png.

    python benchmarks/viewer_screenshot.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import circuits
from circuits.plotting.browser import screenshot
from circuits.plotting.viewer import view
from circuits.zoo import model_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, commit  # noqa: E402


def main() -> None:
    model = circuits.load_model("zoo:planted-ioi")
    task = circuits.load_task(str(model_dir("planted-ioi") / "task.toml"), model, n=200, seed=0)
    scored = circuits.discover(model, task, method="eap-ig", steps=5)
    circuit = scored.minimal(model, task, 0.9, absolute=True)
    result = circuits.evaluate(model, task, circuit, ablation="corrupted")
    metadata = {**scored.metadata, "faithfulness": result.faithfulness,
                "selection": f"minimal top-k by |score| with f >= 0.9 on validation: {circuit.n_edges} edges"}
    shown = circuits.Graph(scored.structure, scores=scored.scores, in_graph=circuit.in_graph, metadata=metadata)
    out = RESULTS / "viewer"
    page = view(shown, out / "planted-ioi_eap-ig.html",
                title="zoo:planted-ioi / EAP-IG: every edge scored, the minimal 90% circuit drawn")
    png = screenshot(page, out / "planted-ioi_eap-ig.png", width=1400, height=950)
    planted = circuits.Graph.load(model_dir("planted-ioi") / "ground_truth.json", model=model)
    info = {"command": "python benchmarks/viewer_screenshot.py", "commit": commit(), "edges": circuit.n_edges,
            "of": scored.structure.n_edges, "faithfulness": result.faithfulness,
            "is_the_planted_circuit": bool((circuit.in_graph == planted.in_graph).all())}
    (out / "planted-ioi_eap-ig.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {page}, {png}: {info}")


if __name__ == "__main__":
    main()
