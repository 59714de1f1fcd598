"""Key-log hook discovery on Debian's real libraries and on small compiled look-alikes.

The facts the tests compare against come from binutils (objdump, and the
.symtab gcc leaves in an unstripped look-alike), not from the code under test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ecapture.elf.keylog_hook import Convention, find_keylog_hook
from ecapture.elf.symbols import Executable
from ecapture.elf.x86_values import Arg, Const, Load, Offset, walk
from ecapture.errors import SymbolNotFound

from .conftest import BORINGSSL, LIBSSL3, compile_c, require_file, run_tool
from .tools import objdump_bytes


def objdump_text(path: Path, vaddr: int, size: int) -> str:
    return run_tool(
        "objdump", "-d", "--no-show-raw-insn", f"--start-address={vaddr:#x}",
        f"--stop-address={vaddr + size:#x}", path,
    )


def getter_offset(path: Path, name: str) -> int:
    """`mov 0xNN(%rdi),%rax` of a one-load getter, as objdump prints it."""
    vaddr = Executable(path).address(name)
    match = re.search(r"mov\s+(0x[0-9a-f]+)\(%rdi\),%rax", objdump_text(path, vaddr, 16))
    assert match is not None, f"{name} is not a one-load getter"
    return int(match[1], 16)


def file_bytes(path: Path, offset: int, size: int) -> bytes:
    with path.open("rb") as stream:
        stream.seek(offset)
        return stream.read(size)


# --- the symbolic walk ----------------------------------------------------------------------

def test_walk_follows_moves_leas_and_loads() -> None:
    # mov rax,rdi; mov r8,rdx; mov rdi,rsi; lea rdx,[rax+0x160]; mov ecx,0x20;
    # mov rsi,[rax+0x9a8]; jmp +0
    code = bytes.fromhex("4889f8 4989d0 4889f7 488d9060010000 b920000000 488bb0a8090000 e900000000")
    trace = walk(code, 0x1000)
    assert trace.end == "jmp"
    (branch,) = trace.branches
    assert branch.tail and branch.target == 0x1000 + len(code)
    assert branch.argument(0) == Arg(1)
    assert branch.argument(1) == Load(Offset(Arg(0), 0x9A8))
    assert branch.argument(2) == Offset(Arg(0), 0x160)
    assert branch.argument(3) == Const(0x20)
    assert branch.argument(4) == Arg(2)


def test_walk_forgets_what_a_call_or_partial_write_clobbers() -> None:
    # mov rbx,rdi; mov r12,rsi; mov sil,1; call +0; mov rdi,rbx; ret
    code = bytes.fromhex("4889fb 4989f4 40b601 e800000000 4889df c3")
    trace = walk(code, 0)
    assert trace.end == "ret"
    assert trace.branches[0].argument(1) is None  # sil written: rsi unknown
    assert trace.registers["rdi"] == Arg(0)  # rbx survives the call
    assert trace.registers["r12"] == Arg(1)
    assert "rsi" not in trace.registers  # caller-saved


def test_walk_records_zero_tests_through_loaded_pointers() -> None:
    # mov rax,[rsi+0x9a8]; cmp qword ptr [rax+0x3d0],0; je +0
    code = bytes.fromhex("488b86a8090000 4883b8d003000000 7400")
    trace = walk(code, 0)
    assert [t.value for t in trace.zero_tests] == [
        Load(Offset(Load(Offset(Arg(1), 0x9A8)), 0x3D0))
    ]
    assert walk(code, 0, stop_at_branch=True).end == "branch"


# --- Debian's libraries ---------------------------------------------------------------------

def test_openssl_hook_is_nss_keylog_int() -> None:
    library = require_file(LIBSSL3)
    hook = find_keylog_hook(library)
    assert hook.convention is Convention.NSS_KEYLOG_INT
    assert hook.version.flavor == "openssl" and hook.version.version is not None
    assert hook.random_deref is None
    assert {"CLIENT_RANDOM", "EXPORTER_SECRET"} <= hook.labels
    # objdump: the logger ends in a tail jump to the hook, after setting its arguments
    logger = objdump_text(library, hook.logger_vaddr, 32)
    assert re.search(rf"jmp\s+{hook.vaddr:x}\b", logger), logger
    assert re.search(rf"lea\s+{hook.random_offset:#x}\(%rax\),%rdx", logger), logger
    assert re.search(r"mov\s+\$0x20,%ecx", logger), logger
    # objdump: the hook tests ctx->keylog_callback of its second argument first
    ctx = getter_offset(library, "SSL_get_SSL_CTX")
    callback = getter_offset(library, "SSL_CTX_get_keylog_callback")
    prologue = objdump_text(library, hook.vaddr, 48)
    assert re.search(rf"mov\s+{ctx:#x}\(%rsi\),%rax", prologue), prologue
    assert re.search(rf"cmpq\s+\$0x0,{callback:#x}\(%rax\)", prologue), prologue
    assert file_bytes(library, hook.file_offset, 16) == objdump_bytes(library, hook.vaddr, 16)


def test_boringssl_hook_is_ssl_log_secret() -> None:
    library = require_file(BORINGSSL)
    hook = find_keylog_hook(library)
    assert hook.convention is Convention.LOG_SECRET
    assert hook.version.flavor == "boringssl"
    assert hook.vaddr == hook.logger_vaddr
    assert hook.file_offset != hook.vaddr  # this file's text is mapped 0x1000 above its offset
    assert file_bytes(library, hook.file_offset, 16) == objdump_bytes(library, hook.vaddr, 16)
    assert {"CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_TRAFFIC_SECRET_0",
            "EXPORTER_SECRET"} <= hook.labels
    ctx = getter_offset(library, "SSL_get_SSL_CTX")
    callback = getter_offset(library, "SSL_CTX_get_keylog_callback")
    prologue = objdump_text(library, hook.vaddr, 48)
    assert re.search(rf"mov\s+{ctx:#x}\(%rdi\),%rax", prologue), prologue
    assert re.search(rf"cmpq\s+\$0x0,{callback:#x}\(%rax\)", prologue), prologue
    # objdump of SSL_get_client_random: *(ssl + deref) + offset is what it copies
    accessor = Executable(library).address("SSL_get_client_random")
    text = objdump_text(library, accessor, 48)
    assert re.search(rf"mov\s+{hook.random_deref:#x}\(%rdi\),%rax", text), text
    assert re.search(rf"add\s+\${hook.random_offset:#x},%rax", text), text


# --- compiled look-alikes -------------------------------------------------------------------

OPENSSL_LIKE = r"""
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
typedef void (*keylog_cb)(const void *ssl, const char *line);
struct ctx { char pad[0x2c8]; keylog_cb keylog_callback; };
struct ssl {
    char pad[0x1a0];
    struct { unsigned char client_random[32]; } s3;
    char pad2[0x5f0 - 0x1c0];
    struct ctx *ctx;
};
__attribute__((used)) static const char version[] = "OpenSSL 3.0.99 1 Jan 2026";
KEYLOG_INT_ATTRIBUTE static int nss_keylog_int(const char *prefix, struct ssl *ssl,
        const uint8_t *p1, size_t l1, const uint8_t *p2, size_t l2)
{
    char line[512];
    size_t at;
    if (ssl->ctx->keylog_callback == NULL)
        return 1;
    at = (size_t)snprintf(line, sizeof(line), "%s ", prefix);
    for (size_t i = 0; i < l1 && at + 3 < sizeof(line); i++)
        at += (size_t)snprintf(line + at, 3, "%02x", p1[i]);
    for (size_t i = 0; i < l2 && at + 3 < sizeof(line); i++)
        at += (size_t)snprintf(line + at, 3, "%02x", p2[i]);
    ssl->ctx->keylog_callback(ssl, line);
    return 1;
}
int ssl_log_rsa(struct ssl *s, const uint8_t *e, size_t el, const uint8_t *p, size_t pl)
{
    if (el < 8)
        return 0;
    return nss_keylog_int("RSA", s, e, 8, p, pl);
}
__attribute__((noinline, visibility("hidden")))
int ssl_log_secret(struct ssl *s, const char *label, const uint8_t *secret, size_t len)
{
    return nss_keylog_int(label, s, s->s3.client_random, 32, secret, len);
}
int tls12_master(struct ssl *s, const uint8_t *m, size_t n)
{ return ssl_log_secret(s, "CLIENT_RANDOM", m, n) + 1; }
int tls13_handshake(struct ssl *s, int server, const uint8_t *m, size_t n)
{ return ssl_log_secret(s, server ? "SERVER_HANDSHAKE_TRAFFIC_SECRET"
                                  : "CLIENT_HANDSHAKE_TRAFFIC_SECRET", m, n) + 1; }
int tls13_exporter(struct ssl *s, const uint8_t *m, size_t n)
{ return ssl_log_secret(s, "EXPORTER_SECRET", m, n) + 1; }
struct ctx *SSL_get_SSL_CTX(const struct ssl *s) { return s->ctx; }
keylog_cb SSL_CTX_get_keylog_callback(const struct ctx *c) { return c->keylog_callback; }
size_t SSL_get_client_random(const struct ssl *s, unsigned char *out, size_t outlen)
{
    if (outlen == 0)
        return 32;
    if (outlen > 32)
        outlen = 32;
    memcpy(out, s->s3.client_random, outlen);
    return outlen;
}
int SSL_write(void *s, const void *b, int n) { (void)s; (void)b; return n; }
"""

BORINGSSL_LIKE = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>
typedef void (*keylog_cb)(const void *ssl, const char *line);
struct span { const uint8_t *data; size_t size; };
struct s3 { char pad[0x48]; uint8_t client_random[32]; };
struct ctx { char pad[0x1f8]; keylog_cb keylog_callback; };
struct ssl { char pad[0x28]; struct s3 *s3; char pad2[0x60 - 0x30]; struct ctx *ctx; };
__attribute__((noinline)) void hex(char *out, const uint8_t *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = 0;
}
__attribute__((noinline, visibility("hidden")))
int ssl_log_secret(const struct ssl *ssl, const char *label, struct span secret)
{
    char line[300];
    if (ssl->ctx->keylog_callback == NULL)
        return 1;
    hex(line, ssl->s3->client_random, 32);
    hex(line + 64, secret.data, secret.size > 64 ? 64 : secret.size);
    line[0] = label[0];
    ssl->ctx->keylog_callback(ssl, line);
    return 1;
}
int tls12(const struct ssl *s, const uint8_t *m, size_t n)
{ struct span x = {m, n}; return ssl_log_secret(s, "CLIENT_RANDOM", x) + 1; }
int tls13(const struct ssl *s, const uint8_t *m, size_t n)
{ struct span x = {m, n}; return ssl_log_secret(s, "CLIENT_TRAFFIC_SECRET_0", x) + 1; }
const struct ctx *SSL_get_SSL_CTX(const struct ssl *s) { return s->ctx; }
keylog_cb SSL_CTX_get_keylog_callback(const struct ctx *c) { return c->keylog_callback; }
size_t SSL_get_client_random(const struct ssl *s, uint8_t *out, size_t outlen)
{
    if (outlen == 0)
        return 32;
    if (outlen > 32)
        outlen = 32;
    memcpy(out, s->s3->client_random, outlen);
    return outlen;
}
int SSL_CTX_set_strict_cipher_list(void *c, const char *s) { (void)c; (void)s; return 1; }
int SSL_get_curve_id(const void *s) { (void)s; return 29; }
int SSL_write(void *s, const void *b, int n) { (void)s; (void)b; return n; }
"""


def build(build_dir: Path, name: str, source: str, *flags: str) -> Path:
    return compile_c(build_dir, f"lib{name}.so", source, "-O2", "-shared", "-fPIC", *flags)


def symtab_address(path: Path, name: str) -> int:
    for line in run_tool("nm", path).splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[2] == name:
            return int(fields[0], 16)
    raise AssertionError(f"{name} not in {path}")


def test_openssl_look_alike_hook_is_its_nss_keylog_int(build_dir: Path) -> None:
    library = build(build_dir, "openssl_like", OPENSSL_LIKE,
                    "-DKEYLOG_INT_ATTRIBUTE=__attribute__((noinline))")
    hook = find_keylog_hook(library)
    assert hook.convention is Convention.NSS_KEYLOG_INT
    assert hook.version.version == "3.0.99"
    # gcc may rename a static function it specialised (nss_keylog_int.constprop.0): the
    # walk proved the arguments, and nm says it is that function
    names = [line.split()[2] for line in run_tool("nm", library).splitlines()
             if len(line.split()) == 3 and int(line.split()[0], 16) == hook.vaddr]
    assert names == ["nss_keylog_int"], names
    assert hook.logger_vaddr == symtab_address(library, "ssl_log_secret")
    assert hook.random_offset == 0x1A0
    assert hook.labels == {"CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                           "SERVER_HANDSHAKE_TRAFFIC_SECRET", "EXPORTER_SECRET"}


def test_boringssl_look_alike_hook_is_its_ssl_log_secret(build_dir: Path) -> None:
    library = build(build_dir, "boringssl_like", BORINGSSL_LIKE)
    run_tool("strip", "--strip-unneeded", library)
    hook = find_keylog_hook(library)
    assert hook.convention is Convention.LOG_SECRET
    assert hook.version.flavor == "boringssl"
    assert (hook.random_deref, hook.random_offset) == (0x28, 0x48)
    assert hook.registers["client_random"] == "*(rdi + 0x28) + 0x48"
    assert hook.cookie == 1 << 63 | 0x28 << 32 | 0x48


def test_inlined_nss_keylog_int_makes_ssl_log_secret_the_hook(build_dir: Path) -> None:
    # what node's static OpenSSL does: ssl_log_secret tests the callback itself
    library = build(build_dir, "openssl_inlined", OPENSSL_LIKE,
                    "-DKEYLOG_INT_ATTRIBUTE=__attribute__((always_inline)) inline")
    hook = find_keylog_hook(library)
    assert hook.convention is Convention.LOG_SECRET
    assert hook.vaddr == symtab_address(library, "ssl_log_secret")
    assert (hook.random_deref, hook.random_offset) == (None, 0x1A0)
    assert hook.cookie == 0x1A0
    assert hook.registers["client_random"] == "rdi + 0x1a0"


def test_library_without_labels_is_refused(build_dir: Path) -> None:
    source = OPENSSL_LIKE.replace('"CLIENT_RANDOM"', '"CLIENT_RND"')
    library = build(build_dir, "openssl_nolabel", source,
                    "-DKEYLOG_INT_ATTRIBUTE=__attribute__((noinline))")
    missing = r"the label CLIENT_RANDOM is not in \.rodata"
    with pytest.raises(SymbolNotFound, match=missing) as caught:
        find_keylog_hook(library)
    message = str(caught.value)  # one line naming the library and its version
    assert str(library) in message and "openssl 3.0.99" in message and "\n" not in message


def test_logger_without_callback_test_is_refused(build_dir: Path) -> None:
    # the callee no longer tests the key-log callback: nothing proves it is nss_keylog_int
    source = OPENSSL_LIKE.replace(
        "if (ssl->ctx->keylog_callback == NULL)\n        return 1;", ""
    )
    library = build(build_dir, "openssl_nocheck", source,
                    "-DKEYLOG_INT_ATTRIBUTE=__attribute__((noinline))")
    with pytest.raises(SymbolNotFound, match="does not test ssl->ctx->keylog_callback"):
        find_keylog_hook(library)


def test_missing_accessor_is_refused(build_dir: Path) -> None:
    source = OPENSSL_LIKE.replace("SSL_get_client_random", "other_get_client_random")
    library = build(build_dir, "openssl_noaccessor", source,
                    "-DKEYLOG_INT_ATTRIBUTE=__attribute__((noinline))")
    with pytest.raises(SymbolNotFound, match="SSL_get_client_random is not exported"):
        find_keylog_hook(library)
