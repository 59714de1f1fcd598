"""The structs of a built BPF object's BTF, as bpftool dumps them: what the layout tests
compare the Python struct formats of the decoders with (one layout source: bpf/events.h)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

OBJECTS = Path(__file__).resolve().parents[2] / "src" / "ecapture" / "objects"


def btf_structs(object_name: str) -> dict[str, dict[str, Any]]:
    """Named structs of src/ecapture/objects/OBJECT_NAME by name; skips when not built."""
    path = OBJECTS / object_name
    if not path.is_file():
        pytest.skip(f"{path} is not built: run `make bpf`")
    bpftool = shutil.which("bpftool") or "/usr/sbin/bpftool"
    if not Path(bpftool).exists():
        pytest.skip("bpftool is not installed (Debian package bpftool)")
    dump = subprocess.run([bpftool, "-j", "btf", "dump", "file", str(path)],
                          check=True, capture_output=True, timeout=30)
    types = json.loads(dump.stdout)["types"]
    return {t["name"]: t for t in types if t.get("kind") == "STRUCT" and t.get("name")}


def offsets(struct_type: dict[str, Any]) -> dict[str, int]:
    """Member name → byte offset."""
    return {m["name"]: m["bits_offset"] // 8 for m in struct_type["members"]}
