"""The pure core imports no I/O library: checked in source and at run time."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

RATING = Path(__file__).resolve().parents[2] / "rating"
# Every module of the pure core and of the tariff book (which reads files, nothing else).
PURE = sorted(f"{path.parent.name}.{path.stem}"
              for folder in ("core", "tariffbook")
              for path in (RATING / folder).glob("*.py"))
FORBIDDEN = {"asyncio", "asyncpg", "aiokafka", "prometheus_client", "aiohttp", "subprocess",
             "socket"}


def imported_roots(source: str) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_pure_modules_are_found() -> None:
    assert {"core.money", "core.rate", "core.quote", "tariffbook.book"} <= set(PURE)


def test_detector_sees_imports() -> None:
    assert imported_roots("import asyncio.tasks\nfrom aiokafka import x\n") == {
        "asyncio",
        "aiokafka",
    }


@pytest.mark.parametrize("module", PURE)
def test_pure_module_source_has_no_io_imports(module: str) -> None:
    source = (RATING / f"{module.replace('.', '/')}.py").read_text(encoding="utf-8")
    assert imported_roots(source) & FORBIDDEN == set()


def test_pure_modules_load_no_io_library() -> None:
    code = (
        "import sys\n"
        f"for name in {PURE!r}:\n"
        "    __import__('rating.' + name)\n"
        f"print(sorted(set(sys.modules) & set({sorted(FORBIDDEN)!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=RATING.parent,
    )
    assert result.stdout.strip() == "[]"
