"""Where a TLS library hands out every secret it derives, found in its machine code.

OpenSSL 3.0 (ssl/ssl_lib.c) derives each secret and calls
`ssl_log_secret(SSL *s, const char *label, const uint8_t *secret, size_t len)`,
which calls the static `nss_keylog_int(label, s, s->s3.client_random, 32,
secret, len)`; that function first returns when no key-log callback is set
(`s->ctx->keylog_callback == NULL`). A uprobe on `nss_keylog_int` therefore
sees label, client random and secret as arguments, whether or not the
program asked for a key log. BoringSSL (ssl/ssl_lib.cc) has
`bssl::ssl_log_secret(const SSL *ssl, const char *label, Span<const uint8_t>
secret)`, which tests `ssl->ctx->keylog_callback` itself and reads
`ssl->s3->client_random`; the Span (pointer, size: 16 trivially copyable
bytes) arrives in the next two argument registers (System V x86-64 ABI,
"Parameter Passing", class INTEGER).

Debian strips both names. They are found, and their arguments proven, from
facts in the file:
1. the NSS key-log labels ("CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
   ...) in .rodata, and the code that loads their addresses (`lea reg, [rip+d]`)
   into an argument register before a call: the one function that receives both
   the TLS 1.2 label and TLS 1.3 labels, always in the same register, is
   ssl_log_secret;
2. the exported accessors SSL_get_SSL_CTX (offset of ssl->ctx),
   SSL_CTX_get_keylog_callback (offset of ctx->keylog_callback) and
   SSL_get_client_random (where the client random lives);
3. the function that tests `*(*(ssl + ctx) + keylog_callback) == 0` is the
   one to probe: ssl_log_secret itself (BoringSSL; an OpenSSL whose compiler
   inlined nss_keylog_int into it, as node's built-in 3.0 does), or the function
   ssl_log_secret passes (label, ssl, ssl + client random, 32, secret, len) to
   (OpenSSL's nss_keylog_int in Debian's libssl.so.3).
Label addresses are taken RIP-relative (`lea`) in position-independent code and
as 32-bit immediates (`mov r32, imm32`) in a non-PIE executable.
Anything else is refused with one line naming the library and its version:
no key is ever read from a place that was guessed.
"""

from __future__ import annotations

import enum
import functools
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile

from ecapture.elf.symbols import Executable
from ecapture.elf.version import SslVersion, detect_ssl_version
from ecapture.elf.x86_values import (
    ARGUMENT_REGISTERS,
    Address,
    Arg,
    Const,
    Load,
    Offset,
    Value,
    add,
    choices,
    walk,
)
from ecapture.errors import LibraryNotFound, SymbolNotFound

TLS12_LABEL = "CLIENT_RANDOM"
# The NSS key log labels of TLS 1.3 (draft-ietf-tls-keylogfile).
TLS13_LABELS = (
    "CLIENT_EARLY_TRAFFIC_SECRET",
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET",
    "CLIENT_TRAFFIC_SECRET_0",
    "SERVER_TRAFFIC_SECRET_0",
    "EARLY_EXPORTER_SECRET",
    "EXPORTER_SECRET",
)
LABELS = (TLS12_LABEL, *TLS13_LABELS)
CLIENT_RANDOM_SIZE = 32  # SSL3_RANDOM_SIZE
# BoringSSL's name for it, when a build keeps it (Itanium C++ ABI mangling).
BORINGSSL_MANGLED = "_ZN4bssl14ssl_log_secretEPK6ssl_stPKcNS_4SpanIKhEE"
# `lea r64, [rip + disp32]`: REX.W (+R), 8D, ModRM with mod=00 rm=101 (Intel SDM vol. 2, 2.2.1.6):
# how position-independent code takes a string's address.
RIP_LEA = re.compile(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", re.DOTALL)
# `mov r32, imm32` (optional REX.B 0x41, B8+r, imm32): how a non-PIE executable (a node
# binary linked at 0x400000) does, its addresses fitting 32 bits.
MOV_IMM32_OPCODES = range(0xB8, 0xC0)
REX_B = 0x41
FLOW_INSTRUCTIONS = 24  # from a label's lea to the call it feeds (seen: <= 12)
PROLOGUE_INSTRUCTIONS = 32  # the callback test comes within the first ~12
BODY_INSTRUCTIONS = 96  # BoringSSL reads the client random ~60 instructions in
ACCESSOR_INSTRUCTIONS = 16
X86_64 = "EM_X86_64"


class Convention(enum.StrEnum):
    """Which arguments the probed function takes (System V x86-64 registers)."""

    # nss_keylog_int(label, ssl, client_random, client_random_len, secret, secret_len)
    NSS_KEYLOG_INT = "nss_keylog_int"
    # ssl_log_secret(ssl, label, secret, secret_len): BoringSSL's (the Span as data, size),
    # or OpenSSL's with nss_keylog_int inlined (a node binary); the client random is
    # read at *(ssl + deref) + offset (BoringSSL's ssl->s3) or ssl + offset
    LOG_SECRET = "ssl_log_secret"


@dataclass(frozen=True, slots=True)
class LabelFlow:
    """Labels whose addresses reach argument `argument` of a call to `target`."""

    target: int
    argument: int
    labels: frozenset[str]
    sites: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class KeylogHook:
    """The function to probe in one library and how to read its arguments."""

    library: Path
    version: SslVersion
    convention: Convention
    vaddr: int
    file_offset: int
    # LOG_SECRET only: client random = *(ssl + random_deref) + random_offset, or
    # ssl + random_offset when random_deref is None
    random_deref: int | None
    random_offset: int
    logger_vaddr: int  # the ssl_log_secret the labels flow into (== vaddr for BoringSSL)
    labels: frozenset[str]  # labels seen flowing into it
    evidence: tuple[str, ...]

    @property
    def registers(self) -> dict[str, str]:
        """Argument -> register, for logs and the report."""
        if self.convention is Convention.NSS_KEYLOG_INT:
            return dict(
                zip(
                    ("label", "ssl", "client_random", "client_random_len", "secret",
                     "secret_len"),
                    ARGUMENT_REGISTERS,
                    strict=True,
                )
            )
        random = (
            f"rdi + {self.random_offset:#x}" if self.random_deref is None
            else f"*(rdi + {self.random_deref:#x}) + {self.random_offset:#x}"
        )
        return {
            "ssl": "rdi", "label": "rsi", "secret": "rdx", "secret_len": "rcx",
            "client_random": random,
        }

    @property
    def cookie(self) -> int:
        """The attach cookie keylog.bpf.c's on_ssl_log_secret reads: bit 63 set when the
        client random is behind a pointer, that pointer's offset in bits 32-62, the
        random's offset in bits 0-31."""
        if self.random_deref is None:
            return self.random_offset
        return 1 << 63 | self.random_deref << 32 | self.random_offset

    def describe(self) -> str:
        arguments = ", ".join(f"{name}={where}" for name, where in self.registers.items())
        return (
            f"{self.convention.value} at {self.vaddr:#x} (file offset {self.file_offset:#x}) "
            f"in {self.library} [{self.version}]: {arguments}"
        )


class _Library:
    """The facts of one file the search reads: sections, exported accessors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.exe = Executable(path)
        if self.exe.machine != X86_64:
            raise SymbolNotFound(f"{self.exe.machine} code is not analysed (x86-64 only)")
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            text = elf.get_section_by_name(".text")
            rodata = elf.get_section_by_name(".rodata")
            if text is None or rodata is None:
                raise SymbolNotFound("no .text or .rodata section header")
            self.text = text.data()
            self.text_vaddr = text["sh_addr"]
            self.rodata = rodata.data()
            self.rodata_vaddr = rodata["sh_addr"]

    def code(self, vaddr: int, size: int) -> bytes:
        start = vaddr - self.text_vaddr
        if not 0 <= start < len(self.text):
            raise SymbolNotFound(f"{vaddr:#x} is outside .text")
        return self.text[start : start + size]

    def walk_function(self, vaddr: int, limit: int) -> list[Value]:
        return walk(self.code(vaddr, limit * 15), vaddr, limit=limit).values

    def accessor(self, name: str) -> tuple[int, list[Value], dict[str, Value]]:
        if not self.exe.has(name):
            raise SymbolNotFound(f"{name} is not exported")
        vaddr = self.exe.address(name)
        trace = walk(self.code(vaddr, ACCESSOR_INSTRUCTIONS * 15), vaddr,
                     limit=ACCESSOR_INSTRUCTIONS)
        return vaddr, trace.values, trace.registers

    def field_getter(self, name: str) -> int:
        """The offset a one-load getter (`return p->field;`) reads from its argument."""
        vaddr, _, registers = self.accessor(name)
        result = registers.get("rax")
        if (
            isinstance(result, Load)
            and isinstance(result.address, Offset)
            and result.address.base == Arg(0)
        ):
            return result.address.delta
        raise SymbolNotFound(f"{name} at {vaddr:#x} does not return *(arg0 + field): {result}")

    def label_addresses(self) -> dict[int, str]:
        """Virtual address of every NUL-terminated occurrence of each label in .rodata
        (a linker may merge "EXPORTER_SECRET" into the tail of "EARLY_EXPORTER_SECRET")."""
        found: dict[int, str] = {}
        for label in LABELS:
            needle = label.encode() + b"\0"
            at = self.rodata.find(needle)
            while at != -1:
                found.setdefault(self.rodata_vaddr + at, label)
                at = self.rodata.find(needle, at + 1)
        return found


def _label_flows(library: _Library, addresses: dict[int, str]) -> list[LabelFlow]:
    """Calls that receive a label's address in an argument register."""
    text, base = library.text, library.text_vaddr
    flows: dict[tuple[int, int], tuple[set[str], list[int]]] = defaultdict(
        lambda: (set(), [])
    )
    for at in _label_loads(text, base, addresses):
        trace = walk(text[at : at + FLOW_INSTRUCTIONS * 15], base + at, registers={},
                     limit=FLOW_INSTRUCTIONS, stop_at_branch=True)
        for branch in trace.branches:
            for index in range(len(ARGUMENT_REGISTERS)):
                value = branch.argument(index)
                labels = _labels_of(value, addresses)
                if labels:
                    seen, sites = flows[(branch.target, index)]
                    seen.update(labels)
                    sites.append(branch.site)
    return [
        LabelFlow(target, argument, frozenset(labels), tuple(sorted(set(sites))))
        for (target, argument), (labels, sites) in sorted(flows.items())
    ]


def _label_loads(text: bytes, base: int, addresses: dict[int, str]) -> list[int]:
    """Offsets in `text` of instructions that may load a label's address into a register
    (the walk from each decodes it for real; a false start decodes as something else)."""
    starts = []
    for match in RIP_LEA.finditer(text):
        at = match.start()
        displacement = int.from_bytes(text[at + 3 : at + 7], "little", signed=True)
        if at + 7 <= len(text) and base + at + 7 + displacement in addresses:
            starts.append(at)
    for address in addresses:
        if address >= 1 << 32:
            continue
        needle = address.to_bytes(4, "little")
        at = text.find(needle, 1)
        while at != -1:
            if text[at - 1] in MOV_IMM32_OPCODES:
                starts.append(at - 2 if at >= 2 and text[at - 2] == REX_B else at - 1)
            at = text.find(needle, at + 1)
    return sorted(set(starts))


def _labels_of(value: Value | None, addresses: dict[int, str]) -> set[str]:
    """The labels `value` may be, when every choice is a label's address."""
    if value is None:
        return set()
    names = set()
    for choice in choices(value):
        if isinstance(choice, Address) and choice.vaddr in addresses:
            names.add(addresses[choice.vaddr])
        elif isinstance(choice, Const) and choice.value in addresses:  # mov r32, imm32
            names.add(addresses[choice.value])
        else:
            return set()
    return names


def _logger(flows: list[LabelFlow]) -> LabelFlow:
    """The one function taking the TLS 1.2 label and TLS 1.3 labels, in one register."""
    candidates = [
        flow for flow in flows
        if TLS12_LABEL in flow.labels and flow.labels & set(TLS13_LABELS)
    ]
    if len(candidates) == 1:
        return candidates[0]
    seen = "; ".join(
        f"{flow.target:#x} arg{flow.argument} <- {','.join(sorted(flow.labels))}"
        for flow in flows
    ) or "none"
    if not candidates:
        raise SymbolNotFound(
            f"no function receives both {TLS12_LABEL} and a TLS 1.3 label (label flows: {seen})"
        )
    raise SymbolNotFound(f"several functions receive the key-log labels ({seen})")


def _rename(value: Value, argument: int) -> Value:
    """`value` with Arg(0) read as Arg(argument): an accessor's SSL* is another function's
    argument `argument`."""
    if value == Arg(0):
        return Arg(argument)
    if isinstance(value, Offset):
        return add(_rename(value.base, argument), value.delta)
    if isinstance(value, Load):
        return Load(_rename(value.address, argument))
    return value


def _ssl_pointers(values: list[Value]) -> set[Value]:
    """Values of the shapes `ssl + k` and `*(ssl + a) + k` (k != 0), ssl being arg0."""
    found: set[Value] = set()
    for value in values:
        if not isinstance(value, Offset) or value.delta <= 0:
            continue
        base = value.base
        if base == Arg(0) or (
            isinstance(base, Load)
            and isinstance(base.address, Offset)
            and base.address.base == Arg(0)
        ):
            found.add(value)
    return found


def _callback_test(ctx: int, callback: int, ssl_argument: int) -> Value:
    return Load(add(Load(add(Arg(ssl_argument), ctx)), callback))


def _tests_callback(library: _Library, vaddr: int, expected: Value) -> int | None:
    """Site of the `callback == 0` test in the prologue of the function at `vaddr`."""
    trace = walk(library.code(vaddr, PROLOGUE_INSTRUCTIONS * 15), vaddr,
                 limit=PROLOGUE_INSTRUCTIONS)
    for test in trace.zero_tests:
        if test.value == expected:
            return test.site
    return None


def _find(library: _Library, version: SslVersion) -> KeylogHook:
    addresses = library.label_addresses()
    if TLS12_LABEL not in addresses.values():
        raise SymbolNotFound(f"the label {TLS12_LABEL} is not in .rodata")
    flow = _logger(_label_flows(library, addresses))
    logger_vaddr = flow.target
    # .dynsym only: a large executable's .symtab takes seconds to read (node: ~30 s)
    if library.exe.exports_function(BORINGSSL_MANGLED):
        exported = library.exe.address(BORINGSSL_MANGLED)
        if exported != logger_vaddr:
            raise SymbolNotFound(
                f"the labels flow into {logger_vaddr:#x}, but {BORINGSSL_MANGLED} is at "
                f"{exported:#x}"
            )
    ctx = library.field_getter("SSL_get_SSL_CTX")
    callback = library.field_getter("SSL_CTX_get_keylog_callback")
    random_vaddr, random_values, _ = library.accessor("SSL_get_client_random")
    random_places = _ssl_pointers(random_values)
    evidence = [
        f"labels {','.join(sorted(flow.labels))} reach arg{flow.argument} of {logger_vaddr:#x} "
        f"(calls at {', '.join(f'{site:#x}' for site in flow.sites)})",
        f"SSL_get_SSL_CTX: ssl->ctx at +{ctx:#x}; SSL_CTX_get_keylog_callback: +{callback:#x}",
        f"SSL_get_client_random ({random_vaddr:#x}) reads "
        f"{', '.join(sorted(map(str, random_places))) or 'nothing we model'}",
    ]
    label_argument = flow.argument
    others = [index for index in range(4) if index != label_argument]
    # BoringSSL (or OpenSSL with nss_keylog_int inlined): the logger tests the callback of
    # its SSL* argument itself.
    for ssl_argument in others:
        site = _tests_callback(
            library, logger_vaddr, _callback_test(ctx, callback, ssl_argument)
        )
        if site is None:
            continue
        if (label_argument, ssl_argument) != (1, 0):
            raise SymbolNotFound(
                f"{logger_vaddr:#x} tests the key-log callback but takes the label in "
                f"arg{label_argument} and the SSL in arg{ssl_argument}, not (ssl, label, span)"
            )
        body = set(library.walk_function(logger_vaddr, BODY_INSTRUCTIONS))
        places = [place for place in random_places if _rename(place, ssl_argument) in body]
        if len(places) != 1:
            raise SymbolNotFound(
                f"{logger_vaddr:#x} tests the key-log callback at {site:#x} but reads "
                f"{len(places)} of the client-random places SSL_get_client_random reads"
            )
        place = places[0]
        assert isinstance(place, Offset)  # _ssl_pointers returns only Offsets
        deref = None
        if isinstance(place.base, Load):
            assert isinstance(place.base.address, Offset)  # the shape _ssl_pointers keeps
            deref = place.base.address.delta
        evidence.append(f"{logger_vaddr:#x} tests ssl->ctx->keylog_callback at {site:#x} "
                        f"and reads the client random at {place}")
        return _hook(library, version, Convention.LOG_SECRET, logger_vaddr,
                     deref, place.delta, logger_vaddr, flow, evidence)
    # OpenSSL: the logger passes (label, ssl, ssl + random, 32, secret, len) on.
    trace = walk(library.code(logger_vaddr, PROLOGUE_INSTRUCTIONS * 15), logger_vaddr,
                 limit=PROLOGUE_INSTRUCTIONS, stop_at_branch=True)
    for branch in trace.branches:
        arguments = [branch.argument(index) for index in range(len(ARGUMENT_REGISTERS))]
        if arguments[0] != Arg(label_argument) or not isinstance(arguments[1], Arg):
            continue
        ssl_argument = arguments[1].index
        secret_arguments = [i for i in range(4) if i not in (label_argument, ssl_argument)]
        random = arguments[2]
        if (
            not isinstance(random, Offset)
            or random.base != Arg(ssl_argument)
            or arguments[3] != Const(CLIENT_RANDOM_SIZE)
            or arguments[4:] != [Arg(i) for i in secret_arguments]
        ):
            continue
        if Offset(Arg(0), random.delta) not in random_places:
            raise SymbolNotFound(
                f"{logger_vaddr:#x} passes ssl + {random.delta:#x} as the client random, "
                f"which SSL_get_client_random does not read"
            )
        site = _tests_callback(library, branch.target, _callback_test(ctx, callback, 1))
        if site is None:
            raise SymbolNotFound(
                f"{branch.target:#x}, called by {logger_vaddr:#x} with (label, ssl, random, "
                f"32, secret, len), does not test ssl->ctx->keylog_callback"
            )
        kind = "jumps" if branch.tail else "calls"
        evidence.append(
            f"{logger_vaddr:#x} {kind} to {branch.target:#x} at {branch.site:#x} with "
            f"(arg{label_argument}, arg{ssl_argument}, {random}, 32, "
            f"arg{secret_arguments[0]}, arg{secret_arguments[1]}), which tests "
            f"ssl->ctx->keylog_callback at {site:#x}"
        )
        return _hook(library, version, Convention.NSS_KEYLOG_INT, branch.target, None,
                     random.delta, logger_vaddr, flow, evidence)
    raise SymbolNotFound(
        f"{logger_vaddr:#x} (receives the labels) neither tests the key-log callback nor "
        f"passes (label, ssl, client random, 32, secret, len) to a function that does"
    )


def _hook(  # noqa: PLR0917 (one private constructor call site per convention)
    library: _Library, version: SslVersion, convention: Convention, vaddr: int,
    random_deref: int | None, random_offset: int, logger_vaddr: int, flow: LabelFlow,
    evidence: list[str],
) -> KeylogHook:
    return KeylogHook(
        library=library.path,
        version=version,
        convention=convention,
        vaddr=vaddr,
        file_offset=library.exe.vaddr_to_offset(vaddr),
        random_deref=random_deref,
        random_offset=random_offset,
        logger_vaddr=logger_vaddr,
        labels=flow.labels,
        evidence=tuple(evidence),
    )


@functools.lru_cache(maxsize=32)
def _cached(path: Path, _identity: tuple[int, int, int]) -> KeylogHook:
    version = detect_ssl_version(path)
    try:
        return _find(_Library(path), version)
    except SymbolNotFound as error:
        raise SymbolNotFound(f"no key-log hook in {path} ({version}): {error}") from None


def find_keylog_hook(path: Path | str) -> KeylogHook:
    """The function to probe for the secrets of `path` (a libssl or a static embedder).

    Raises SymbolNotFound with one line naming the library, its version and
    what was not found. Results are cached per (device, inode, mtime).
    """
    path = Path(path).resolve()
    try:
        status = path.stat()
    except OSError as error:
        raise LibraryNotFound(f"{path}: cannot read ({error.strerror})") from error
    return _cached(path, (status.st_dev, status.st_ino, status.st_mtime_ns))
