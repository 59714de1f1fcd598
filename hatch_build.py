"""Build the BPF objects with the Makefile before the wheel is packed."""

from __future__ import annotations

import subprocess
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class BpfBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        subprocess.run(["make", "-C", self.root, "bpf"], check=True)
