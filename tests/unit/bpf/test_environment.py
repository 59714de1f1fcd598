"""Up-front checks: each refusal names the feature and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest

from ecapture.bpf import check_environment, environment
from ecapture.errors import PermissionDenied, UnsupportedKernel

ROOT_STATUS = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
USER_STATUS = "Name:\tpython\nCapEff:\t0000000000000000\n"
BPF_PERFMON_ONLY = f"CapEff:\t{(1 << 39) | (1 << 38):016x}\n"
BPF_ONLY = f"CapEff:\t{1 << 39:016x}\n"


def test_effective_capabilities_parses_cap_eff() -> None:
    assert environment.effective_capabilities(ROOT_STATUS) == 0x1FFFFFFFFFF
    assert environment.effective_capabilities("Name:\tx\n") == 0


@pytest.mark.parametrize(
    ("status", "allowed"),
    [(ROOT_STATUS, True), (USER_STATUS, False), (BPF_PERFMON_ONLY, True), (BPF_ONLY, False)],
)
def test_can_trace_needs_sys_admin_or_bpf_and_perfmon(status: str, allowed: bool) -> None:
    assert environment.can_trace(environment.effective_capabilities(status)) is allowed


def test_unprivileged_process_is_told_to_use_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = tmp_path / "status"
    status.write_text(USER_STATUS)
    monkeypatch.setattr(environment, "PROCESS_STATUS", status)
    with pytest.raises(PermissionDenied) as raised:
        check_environment()
    assert str(raised.value) == "ecapture needs root (CAP_BPF and CAP_PERFMON); run it with sudo"


def test_missing_kernel_btf_names_the_path_and_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status = tmp_path / "status"
    status.write_text(ROOT_STATUS)
    monkeypatch.setattr(environment, "PROCESS_STATUS", status)
    monkeypatch.setattr(environment, "KERNEL_BTF", tmp_path / "vmlinux")
    with pytest.raises(UnsupportedKernel, match=rf"no BTF at {tmp_path}/vmlinux.*--btf-file PATH"):
        check_environment()
    with pytest.raises(UnsupportedKernel, match=r"BTF file /nonexistent.btf \(--btf-file\)"):
        check_environment(btf_custom_path="/nonexistent.btf")


def test_missing_uprobe_pmu_names_the_feature(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not environment.KERNEL_BTF.exists() or not environment.ring_buffer_supported():
        pytest.skip("needs kernel BTF and ring buffer support to reach the uprobe check")
    status = tmp_path / "status"
    status.write_text(ROOT_STATUS)
    monkeypatch.setattr(environment, "PROCESS_STATUS", status)
    monkeypatch.setattr(environment, "UPROBE_PMU_TYPE", tmp_path / "type")
    with pytest.raises(UnsupportedKernel, match=r"no uprobe PMU .*Linux >= 4\.17"):
        check_environment()
