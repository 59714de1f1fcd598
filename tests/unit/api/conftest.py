"""Every API test starts with the fake module's class-wide state reset."""

from __future__ import annotations

import pytest

from .fakes import FakeModule


@pytest.fixture(autouse=True)
def _fresh_fakes() -> None:
    FakeModule.instances.clear()
    FakeModule.calls.clear()
    FakeModule.budget = None
