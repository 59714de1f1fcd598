"""The ctypes mirrors of struct bpf_tc_hook and bpf_tc_opts match libbpf's header."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from ecapture.bpf import _libbpf, tc

HEADER = Path("/usr/include/bpf/libbpf.h")
PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
#include <bpf/libbpf.h>
#define FIELD(s, f) \
	printf(#s " " #f " %zu %zu\n", offsetof(struct s, f), sizeof(((struct s *)0)->f))
int main(void)
{
	printf("bpf_tc_hook size %zu\n", sizeof(struct bpf_tc_hook));
	printf("bpf_tc_opts size %zu\n", sizeof(struct bpf_tc_opts));
	FIELD(bpf_tc_hook, sz);
	FIELD(bpf_tc_hook, ifindex);
	FIELD(bpf_tc_hook, attach_point);
	FIELD(bpf_tc_hook, parent);
	FIELD(bpf_tc_opts, sz);
	FIELD(bpf_tc_opts, prog_fd);
	FIELD(bpf_tc_opts, flags);
	FIELD(bpf_tc_opts, prog_id);
	FIELD(bpf_tc_opts, handle);
	FIELD(bpf_tc_opts, priority);
	printf("BPF_TC_INGRESS value %d\n", BPF_TC_INGRESS);
	printf("BPF_TC_EGRESS value %d\n", BPF_TC_EGRESS);
	return 0;
}
"""


def test_tc_structs_match_libbpf_headers(tmp_path: Path) -> None:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not HEADER.is_file():
        pytest.skip("needs a C compiler and libbpf-dev's headers")
    source = tmp_path / "layout.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "layout"
    subprocess.run([compiler, str(source), "-o", str(binary)], check=True, timeout=60)
    output = subprocess.run([str(binary)], check=True, capture_output=True, text=True, timeout=10)
    expected: dict[tuple[str, str], tuple[int, ...]] = {}
    for line in output.stdout.splitlines():
        name, field, *numbers = line.split()
        expected[(name, field)] = tuple(int(n) for n in numbers)
    actual: dict[tuple[str, str], tuple[int, ...]] = {
        ("bpf_tc_hook", "size"): (ctypes.sizeof(_libbpf.TcHook),),
        ("bpf_tc_opts", "size"): (ctypes.sizeof(_libbpf.TcOptions),),
        ("BPF_TC_INGRESS", "value"): (tc.BPF_TC_INGRESS,),
        ("BPF_TC_EGRESS", "value"): (tc.BPF_TC_EGRESS,),
    }
    for name, mirror in (("bpf_tc_hook", _libbpf.TcHook), ("bpf_tc_opts", _libbpf.TcOptions)):
        for field, _ in mirror._fields_:
            descriptor = getattr(mirror, field)
            actual[(name, field)] = (descriptor.offset, descriptor.size)
    assert actual == expected
