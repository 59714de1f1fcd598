"""The native tests share tests/unit's record builders (records.py)."""

from __future__ import annotations

import sys
from pathlib import Path

UNIT = str(Path(__file__).resolve().parent.parent)
if UNIT not in sys.path:
    sys.path.insert(0, UNIT)
