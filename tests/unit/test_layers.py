"""The import contracts of pyproject.toml hold: layers, a pure core, no cycles."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _lint_imports() -> str:
    found = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(found).exists():
        pytest.fail("lint-imports is not installed (import-linter is a dev dependency)")
    return found


def test_import_contracts_are_kept() -> None:
    result = subprocess.run([_lint_imports(), "--no-cache"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_a_broken_layer_is_reported(tmp_path: Path) -> None:
    """The check can fail: a core module importing a store breaks the contracts."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".venv", ".git", ".rating", "*_cache", "__pycache__", "tests", "deploy", "bench"))
    money = copy / "rating" / "core" / "money.py"
    money.write_text(money.read_text() + "\nimport rating.stores.db  # noqa\n")
    result = subprocess.run([_lint_imports(), "--no-cache"], cwd=copy, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode != 0
    assert "rating.core.money -> rating.stores.db" in result.stdout
