"""Headless Chromium for the viewer: a PNG of a page, or the page's DOM after its scripts ran.

Uses the system's Chromium (Debian's ``chromium`` package, or ``$CIRCUITS_CHROMIUM``), started with a fresh empty
profile and everything that would reach the network switched off, so rendering a viewer page stays offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from circuits.errors import CircuitsError

__all__ = ["BrowserError", "find_chromium", "screenshot", "dump_dom"]

_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync",
          "--disable-extensions", "--hide-scrollbars", "--mute-audio")


class BrowserError(CircuitsError, RuntimeError):
    """No Chromium to run, or Chromium failed on a page."""


def find_chromium() -> str | None:
    """The Chromium executable: ``$CIRCUITS_CHROMIUM`` if set, else the first of chromium, chromium-browser,
    google-chrome on the PATH; None when there is none."""
    explicit = os.environ.get("CIRCUITS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(page: Path, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise BrowserError("no Chromium found; fix: install it (Debian: apt-get install -y chromium) or set "
                           "CIRCUITS_CHROMIUM to its path")
    if not page.exists():
        raise BrowserError(f"{page} does not exist")
    with tempfile.TemporaryDirectory(prefix="circuits-chromium-") as profile:
        cmd = [exe, *_FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise BrowserError(f"Chromium did not finish {page} within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise BrowserError(f"Chromium failed on {page} (exit {done.returncode}): {done.stderr.strip()[-500:]}")
    return done


def screenshot(page: str | os.PathLike, out: str | os.PathLike, *, width: int = 1400, height: int = 1000,
               wait_ms: int = 2000, timeout: float = 120.0) -> Path:
    """Render an HTML file headless and save a PNG of its window (``width`` x ``height`` pixels)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _run(Path(page), [f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}",
                      f"--screenshot={out.resolve()}"], timeout)
    if not out.exists():
        raise BrowserError(f"Chromium ran but wrote no screenshot to {out}")
    return out


def dump_dom(page: str | os.PathLike, *, wait_ms: int = 2000, timeout: float = 120.0) -> str:
    """The page's DOM (serialized HTML) after it loaded and its scripts ran for ``wait_ms`` of virtual time
    (0: right after the load event, on the real clock, for timing what the page does)."""
    budget = [f"--virtual-time-budget={wait_ms}"] if wait_ms > 0 else []
    return _run(Path(page), [*budget, "--dump-dom"], timeout).stdout
