"""Fixtures for the end-to-end tests: servers on 127.0.0.1 and the tool itself.

Every e2e test needs root (autouse check below). Tests that run ecapture ask
for the `ecapture` fixture, which also needs kernel BTF and the built BPF
objects; tests that need a program call `require_programs`. Each skip says
what is missing and how to get it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .capture import BTF_PATH, TLS_OBJECT, Ecapture
from .targets import (
    Certificate,
    Server,
    make_certificate,
    missing_programs,
    nghttpd_server,
    nginx_server,
)


def require_programs(*names: str) -> None:
    missing = missing_programs(*names)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (make deps installs the test targets)")


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("e2e tests need root (uprobes, BPF, nginx, network namespaces)")


@pytest.fixture(scope="session")
def ecapture() -> Ecapture:
    """The tool under test; skips when the kernel or the build cannot run it."""
    if os.geteuid() != 0:
        pytest.skip("e2e tests need root")
    if not BTF_PATH.exists():
        pytest.skip(f"no kernel BTF at {BTF_PATH}: the BPF objects are CO-RE")
    if not TLS_OBJECT.exists():
        pytest.skip(f"{TLS_OBJECT} is missing: run make bpf")
    return Ecapture.find()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    require_programs("openssl")
    return make_certificate(tmp_path_factory.mktemp("certificate"))


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, certificate: Certificate) -> Iterator[Server]:
    require_programs("nginx")
    with nginx_server(tmp_path_factory.mktemp("nginx"), certificate) as server:
        yield server


@pytest.fixture(scope="session")
def nghttpd(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate
) -> Iterator[Server]:
    require_programs("nghttpd")
    with nghttpd_server(tmp_path_factory.mktemp("nghttpd"), certificate) as server:
        yield server
