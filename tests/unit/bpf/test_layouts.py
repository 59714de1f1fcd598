"""The ctypes mirrors of libbpf's option and TC structs match the C headers byte for byte."""

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
	printf("bpf_object_open_opts size %zu\n", sizeof(struct bpf_object_open_opts));
	printf("bpf_uprobe_opts size %zu\n", sizeof(struct bpf_uprobe_opts));
	FIELD(bpf_object_open_opts, sz);
	FIELD(bpf_object_open_opts, object_name);
	FIELD(bpf_object_open_opts, relaxed_maps);
	FIELD(bpf_object_open_opts, pin_root_path);
	FIELD(bpf_object_open_opts, kconfig);
	FIELD(bpf_object_open_opts, btf_custom_path);
	FIELD(bpf_object_open_opts, kernel_log_buf);
	FIELD(bpf_object_open_opts, kernel_log_size);
	FIELD(bpf_object_open_opts, kernel_log_level);
	FIELD(bpf_uprobe_opts, sz);
	FIELD(bpf_uprobe_opts, ref_ctr_offset);
	FIELD(bpf_uprobe_opts, bpf_cookie);
	FIELD(bpf_uprobe_opts, retprobe);
	FIELD(bpf_uprobe_opts, func_name);
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


def c_layout(tmp_path: Path) -> dict[tuple[str, str], tuple[int, ...]]:
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None or not HEADER.is_file():
        pytest.skip("needs a C compiler and libbpf-dev's headers")
    source = tmp_path / "layout.c"
    source.write_text(PROGRAM)
    binary = tmp_path / "layout"
    subprocess.run([compiler, str(source), "-o", str(binary)], check=True, timeout=60)
    output = subprocess.run([str(binary)], check=True, capture_output=True, text=True, timeout=10)
    layout: dict[tuple[str, str], tuple[int, ...]] = {}
    for line in output.stdout.splitlines():
        struct_name, field, *numbers = line.split()
        layout[(struct_name, field)] = tuple(int(n) for n in numbers)
    return layout


def python_layout() -> dict[tuple[str, str], tuple[int, ...]]:
    layout: dict[tuple[str, str], tuple[int, ...]] = {
        ("bpf_object_open_opts", "size"): (ctypes.sizeof(_libbpf.ObjectOpenOptions),),
        ("bpf_uprobe_opts", "size"): (ctypes.sizeof(_libbpf.UprobeOptions),),
        ("bpf_tc_hook", "size"): (ctypes.sizeof(_libbpf.TcHook),),
        ("bpf_tc_opts", "size"): (ctypes.sizeof(_libbpf.TcOptions),),
        ("BPF_TC_INGRESS", "value"): (tc.BPF_TC_INGRESS,),
        ("BPF_TC_EGRESS", "value"): (tc.BPF_TC_EGRESS,),
    }
    for struct_name, mirror in (
        ("bpf_object_open_opts", _libbpf.ObjectOpenOptions),
        ("bpf_uprobe_opts", _libbpf.UprobeOptions),
        ("bpf_tc_hook", _libbpf.TcHook),
        ("bpf_tc_opts", _libbpf.TcOptions),
    ):
        for field, _ctype in mirror._fields_:
            if not field.startswith("_"):
                descriptor = getattr(mirror, field)
                layout[(struct_name, field)] = (descriptor.offset, descriptor.size)
    return layout


def test_option_structs_match_libbpf_headers(tmp_path: Path) -> None:
    assert python_layout() == c_layout(tmp_path)
