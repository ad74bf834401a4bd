"""The package metadata builds without warnings and speaks of the repository only."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression():
    # A TOML table ({text = ...}) is deprecated since setuptools 77 and warns at every build.
    # (Read as text: tomllib is not in Python 3.10, which the package still supports.)
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    assert [line for line in lines if line.startswith("license")] == ['license = "Apache-2.0"']


def test_comments_point_at_nothing_outside_the_repository():
    """A clone has no parent folder to read: a comment must say its reason, not point away."""
    for name in ("pyproject.toml", "Makefile", "params.yaml", "dvc.yaml"):
        for number, line in enumerate((ROOT / name).read_text().splitlines(), 1):
            assert not re.search(r"\.\./", line), f"{name}:{number} points outside: {line.strip()}"


def test_building_the_package_warns_about_nothing(tmp_path):
    # The venv's setuptools, without build isolation: offline and a couple of seconds.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    output = done.stdout + done.stderr
    warnings = [line for line in output.splitlines() if "Warning" in line and "setuptools" in line]
    assert not warnings, "\n".join(warnings)
