"""Pages as a person sees them: headless Chromium renders a URL (JavaScript included) and the
test reads the resulting DOM, or a screenshot is taken for the README."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",  # the tests may run as root
    "--disable-gpu",
    "--disable-background-networking",  # no network but loopback here: no background calls
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=15000",  # let single-page apps fetch and draw
]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("chromium is not installed: `make install` installs it")
    return found


def status(url: str) -> int:
    """The HTTP status of ``url`` (a 404 is a status, not an exception)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def dump_dom(url: str) -> str:
    """The DOM after Chromium rendered ``url``."""
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return done.stdout


def screenshot(url: str, path: Path, size: str = "1400,1000") -> Path:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                "--run-all-compositor-stages-before-draw",
                f"--screenshot={path}",
                url,
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    return path
