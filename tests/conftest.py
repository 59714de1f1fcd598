"""Shared pytest set-up for every test directory.

Tests under tests/e2e/ drive real programs as root: they get the `e2e` marker
here, so `pytest -m "not e2e"` runs only what needs neither root nor BPF.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
E2E_DIR = REPO_ROOT / "tests" / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT
