"""Provenance for everything written to ``results/``: which commit, machine, date and settings produced it.

>>> p = provenance({"top_k": 200}, command="circuits plot g.json")
>>> sorted(p)
['command', 'commit', 'date', 'machine', 'settings']
>>> provenance_line(p).startswith("circuits @ ")
True
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

_PACKAGE = Path(__file__).resolve().parents[1]


def source_checkout() -> Path | None:
    """The git checkout this package runs from (an editable install, or the repository on ``sys.path``), or
    None for an installed copy (site-packages), whose version is then its provenance."""
    root = _PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / ".git").exists() else None


@lru_cache(maxsize=1)
def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """Short hash of HEAD, with ``-dirty`` when tracked files differ from it, of ``cwd`` or else of the checkout
    the package runs from; an installed package (no checkout) gives its version (``v0.1.0``); ``unknown`` when
    git cannot tell.

    Outputs (``results/``, ``graphs/``) do not count: regenerating a result rewrites its own file, and that
    must not mark the code that produced the next one as modified."""
    where = cwd or source_checkout()
    if where is None:
        from circuits import __version__

        return f"v{__version__}"
    where = str(where)
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=where,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)results", ":(exclude)graphs"], capture_output=True,
                               text=True, cwd=where, timeout=10).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(maxsize=1)
def machine() -> dict[str, Any]:
    """CPU model and cores, platform, Python, torch and the GPU when there is one (torch only if importable)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


def machine_line(m: Mapping[str, Any]) -> str:
    """``AMD EPYC 7B13, 2 cores, torch 2.3.0, NVIDIA H100`` (short, for figure footers)."""
    parts = [str(m.get("cpu", "?")), f"{m.get('cores', '?')} cores"]
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    parts.append(str(m["gpu"]) if m.get("gpu") else "no GPU")
    return ", ".join(parts)


def provenance(settings: Mapping[str, Any] | None = None, command: str | None = None) -> dict[str, Any]:
    """``{commit, machine, date, command, settings}`` describing the current process."""
    return {"commit": git_commit(), "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": command if command is not None else " ".join(["circuits", *sys.argv[1:]])
            if Path(sys.argv[0]).name == "circuits" else "",
            "settings": dict(settings or {})}


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v if isinstance(v, (str, int, float)) else json.dumps(v, default=str)}"
                     for k, v in settings.items())


def provenance_line(prov: Mapping[str, Any] | None) -> str:
    """One line for a figure footer or a table caption."""
    if not prov:
        return ""
    m = prov.get("machine") or {}
    parts = [f"circuits @ {prov.get('commit', '?')}", machine_line(m) if isinstance(m, Mapping) else str(m),
             str(prov.get("date", ""))]
    if prov.get("settings"):
        parts.append(_settings_text(prov["settings"]))
    return " | ".join(p for p in parts if p)


def stamp(fig, prov: Mapping[str, Any] | None, *, fontsize: float = 6.5) -> None:
    """Write the provenance line at the bottom of ``fig`` (small, grey) and keep it for the file's metadata."""
    line = provenance_line(prov)
    if not line:
        return
    if prov and prov.get("command"):
        line += f"\nregenerate: {prov['command']}"
    # Under everything drawn so far (legends below the axes included): saving with a tight bounding box takes
    # it in, so it never overlaps the figure.
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    box = fig.get_tightbbox(canvas.get_renderer())
    left = box.x0 / fig.get_figwidth()
    bottom = box.y0 / fig.get_figheight()
    fig.text(left, bottom - 0.12 / fig.get_figheight(), line, fontsize=fontsize, color="0.45", ha="left", va="top")
    fig._circuits_provenance = dict(prov or {})  # picked up by save()


def save(fig, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save by suffix (``.png``, ``.svg``, ``.pdf``); provenance (if stamped) goes into the file's metadata too."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise ValueError(f"cannot write a figure to {path}: use .png, .svg or .pdf")
    path.parent.mkdir(parents=True, exist_ok=True)
    prov = getattr(fig, "_circuits_provenance", None)
    metadata: dict[str, Any] = {}
    if prov:
        text = provenance_line(prov) + (f" | regenerate: {prov['command']}" if prov.get("command") else "")
        if suffix == ".png":
            metadata = {"Software": f"circuits @ {prov.get('commit', '?')}", "Description": text}
        elif suffix == ".svg":
            metadata = {"Description": text}
        else:
            metadata = {"Subject": text}
    fig.savefig(path, dpi=dpi, metadata=metadata or None, bbox_inches="tight",
                facecolor="white")
    return path
