"""The environment is the one that was tested: ``requirements.lock`` agrees with
``pyproject.toml``, pins every distribution with its hashes, and is what the venv holds.

The lock is written by ``make lock`` (uv) from ``pyproject.toml``; ``make install`` installs
exactly it. A range changed in ``pyproject.toml`` without ``make lock``, a dependency added or
dropped, or a venv that drifted from the lock fails here.
"""

from __future__ import annotations

import re
import sysconfig
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stopdrift_common.settings import PROJECT_ROOT

LOCK = PROJECT_ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
SEEDS = {"pip", "stopdrift"}  # the venv's own installer, and the project installed editable


def lock_entries() -> dict[str, dict]:
    """name -> {"version", "hashes", "via"} for every pinned distribution of the lock."""
    entries: dict[str, dict] = {}
    current: dict | None = None
    for line in LOCK.read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            current = {"version": m[2], "hashes": [], "via": set()}
            entries[canonicalize_name(m[1])] = current
        elif current is not None and (m := re.search(r"--hash=(sha256:[0-9a-f]{64})", line)):
            current["hashes"].append(m[1])
        elif current is not None and (m := re.match(r"^\s+#\s+(?:via\s+)?(\S.*)$", line)):
            current["via"].add(m[1].strip())
    return entries


def direct_requirements() -> list[Requirement]:
    """The dependencies and every extra (make lock locks them all)."""
    project = PYPROJECT["project"]
    names = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        names += extra
    return [Requirement(r) for r in names]


ENTRIES = lock_entries()


def test_the_lock_pins_every_requirement_within_its_range():
    for req in direct_requirements():
        entry = ENTRIES.get(canonicalize_name(req.name))
        assert entry is not None, f"{req.name} is not in the lock: run make lock"
        assert req.specifier.contains(entry["version"], prereleases=True), (
            f"the lock pins {req.name}=={entry['version']}, outside {req} in pyproject.toml: "
            "run make lock"
        )


def test_the_lock_has_no_direct_dependency_pyproject_dropped():
    wanted = {canonicalize_name(r.name) for r in direct_requirements()}
    locked_direct = {n for n, e in ENTRIES.items() if "stopdrift (pyproject.toml)" in e["via"]}
    assert locked_direct == wanted


def test_every_pin_has_hashes():
    assert len(ENTRIES) > 100
    assert [n for n, e in ENTRIES.items() if not e["hashes"]] == []


def test_pyarrow_stays_below_the_release_that_needs_numpy_2():
    assert ENTRIES["numpy"]["version"].startswith("1.")
    assert int(ENTRIES["pyarrow"]["version"].split(".")[0]) < 26


def test_the_venv_holds_exactly_the_lock():
    """The environment running the tests (make test: the venv make install built)."""
    # Only site-packages: setuptools puts the packages it vendors (their own dist-info) on
    # sys.path once something imports pkg_resources.
    site = sysconfig.get_paths()["purelib"]
    installed = {
        canonicalize_name(d.metadata["Name"]): d.version
        for d in metadata.distributions(path=[site])
    }
    differ = {
        name: (entry["version"], installed.get(name))
        for name, entry in ENTRIES.items()
        if installed.get(name) != entry["version"]
    }
    assert differ == {}, "distributions that differ from the lock (locked, installed)"
    assert set(installed) - set(ENTRIES) - SEEDS == set()
