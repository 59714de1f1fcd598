"""Packets from tc.bpf.o and secrets from keylog.bpf.o into one pcapng, read by tshark.

The file is written as a capture would write it: packets held a short window,
each new secret written at once as a Decryption Secrets Block, so tshark's
single pass (`tshark -r FILE`, no options) must decrypt the HTTP/1.1 and
HTTP/2 exchanges with nothing but the file. And TC filters outlive a process:
after `kill -9` of a capturing process, the next run removes what it left.
"""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecapture.bpf import LoadedObject
from ecapture.bpf.tc import ECAPTURE_TC_HANDLE, remove_leftover_filters
from ecapture.output.pcapng import PcapngWriter
from ecapture.packets import TC_EGRESS, decode_packet
from ecapture.pcap_filter import PacketFilter

from . import targets
from .conftest import require_programs
from .keys import TC_OBJECT, TC_PROGRAMS, KeyProbe, key_probe, packet_capture, skip_unless_bpf
from .targets import Server, curl_argv

pytestmark = pytest.mark.e2e

INTERFACE = "lo"
HOLD_NS = 200_000_000  # packets wait this long for a late secret
DRAIN_S = 0.5
OWNER = struct.Struct("<II16s")  # struct sock_owner


def tool(*argv: str | Path) -> str:
    if shutil.which(str(argv[0])) is None:
        pytest.skip(f"{argv[0]} is not installed (Debian package tshark)")
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def owner_comment(packets: LoadedObject, cookie: int) -> str | None:
    if cookie == 0:
        return None
    value = packets.map("sock_owners").lookup(struct.pack("<Q", cookie))
    if value is None:
        return None
    pid, _tid, comm = OWNER.unpack(value)
    name = comm.split(b"\0", 1)[0].decode()
    return f"pid {pid} comm {name}"


def side_traffic() -> int:
    """One plain TCP exchange on another port of lo: what the filter must leave out."""
    with socket.create_server((targets.HOST, 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection((targets.HOST, port), timeout=5) as client:
            accepted, _ = server.accept()
            with accepted:
                client.sendall(b"not ours")
                accepted.recv(64)
    return int(port)


def capture_exchange(
    keys: KeyProbe, packets: LoadedObject, writer: PcapngWriter, port: int,
    client: subprocess.Popen[bytes],
) -> int:
    """Stream packets of `port` and every new secret into `writer` until the client is done;
    the number of packets the filter left out."""
    reader = packets.ring_reader("packets")
    only = PacketFilter(f"tcp port {port}")
    left_out = 0
    interface = writer.interface(INTERFACE)
    to_wall = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
    finished_at: float | None = None
    while finished_at is None or time.monotonic() - finished_at < DRAIN_S:
        writer.write_secrets([secret.line() for secret in keys.drain(0)])
        for record in reader.poll(10):
            assert isinstance(record, bytes)
            packet = decode_packet(record)
            # on loopback each packet crosses egress, then ingress: one copy is the packet
            if packet.direction != TC_EGRESS:
                continue
            if not only.matches(packet.data, packet.length):
                left_out += 1
                continue
            cookie = packet.socket_cookie
            writer.write_packet(
                interface, packet.timestamp_ns + to_wall, packet.data, packet.length,
                lambda cookie=cookie: owner_comment(packets, cookie),  # type: ignore[misc]
            )
        writer.release(time.time_ns())
        if finished_at is None and client.poll() is not None:
            finished_at = time.monotonic()
            side_traffic()
    writer.flush()
    only.close()
    return left_out


def run_capture(tmp_path: Path, server: Server, argv: list[str]) -> tuple[Path, bytes, str]:
    output = tmp_path / "ours.pcapng"
    with key_probe(tmp_path / "ours.keylog") as keys, packet_capture(INTERFACE) as packets, \
            PcapngWriter(str(output), hold_ns=HOLD_NS) as writer:
        client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            left_out = capture_exchange(keys, packets, writer, server.port, client)
            stdout, stderr = client.communicate(timeout=targets.CLIENT_TIMEOUT_S)
        finally:
            targets.stop_process(client, signal.SIGKILL)
        assert client.returncode == 0, stderr
        assert keys.failures == []
        blocks = writer.secrets_blocks
    assert blocks >= 1
    assert left_out >= 3  # at least the side exchange's handshake
    ports = tool("tshark", "-r", output, "-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport")
    assert all(str(server.port) in row.split("\t") for row in ports.splitlines()), ports
    info = tool("capinfos", output)
    assert f"Number of decryption secrets in file: {blocks}" in info
    return output, stdout, tool("tshark", "-r", output)


def check_comments(output: Path, server: Server, expected_server_comm: str) -> None:
    """Every packet curl sent names curl; the server's data packets name the server."""
    rows = tool("tshark", "-r", output, "-T", "fields", "-e", "tcp.srcport",
                "-e", "tcp.len", "-e", "frame.comment").splitlines()
    sent_by_curl = [row.split("\t") for row in rows if row.split("\t")[0] != str(server.port)]
    assert sent_by_curl and all("comm curl" in row[2] for row in sent_by_curl), sent_by_curl
    server_data = [row.split("\t") for row in rows
                   if row.split("\t")[0] == str(server.port) and row.split("\t")[1] != "0"]
    assert server_data
    assert all(f"comm {expected_server_comm}" in row[2] for row in server_data), server_data


def test_http1_exchange_decrypts_from_our_pcapng(tmp_path: Path, nginx: Server) -> None:
    require_programs("curl")
    output, body, summary = run_capture(
        tmp_path, nginx, curl_argv(nginx.url("/index.html"), headers=["X-Marker: tc-4711"])
    )
    assert body == targets.KNOWN_BODY
    assert "GET /index.html HTTP/1.1" in summary, summary
    assert "HTTP/1.1 200 OK" in summary, summary
    exported = tmp_path / "objects"
    tool("tshark", "-r", output, "--export-objects", f"http,{exported}")
    assert (exported / "index.html").read_bytes() == targets.KNOWN_BODY
    fields = tool("tshark", "-r", output, "-Y", "http.request", "-T", "fields",
                  "-e", "http.request.line")
    assert "X-Marker: tc-4711\\r\\n" in fields
    check_comments(output, nginx, "nginx")


def test_http2_exchange_decrypts_from_our_pcapng(tmp_path: Path, nghttpd: Server) -> None:
    require_programs("curl")
    output, body, summary = run_capture(
        tmp_path, nghttpd, curl_argv(nghttpd.url("/index.html"), http2=True)
    )
    assert body == targets.KNOWN_BODY
    assert "HEADERS[1]: GET /index.html" in summary, summary
    assert "HEADERS[1]: 200 OK" in summary, summary
    data = tool("tshark", "-r", output, "-Y", "http2.type == 0", "-T", "fields",
                "-e", "http2.data.data")
    assert targets.KNOWN_BODY.hex() in data.replace(":", "").replace("\n", "")
    check_comments(output, nghttpd, "nghttpd")


HOLDER = r"""
import sys, time
from pathlib import Path
from ecapture.bpf import ObjectSpec
loaded = ObjectSpec.open(Path(sys.argv[1])).load()
loaded.attach_tc("ecap_tc_egress", "lo", "egress")
loaded.attach_tc("ecap_tc_ingress", "lo", "ingress")
print("attached", flush=True)
time.sleep(60)
"""


def tc_filters(direction: str) -> str:
    return subprocess.run(["tc", "filter", "show", "dev", INTERFACE, direction],
                          capture_output=True, text=True, timeout=10, check=True).stdout


def has_clsact() -> bool:
    return "qdisc clsact" in subprocess.run(
        ["tc", "qdisc", "show", "dev", INTERFACE], capture_output=True, text=True, timeout=10,
        check=True,
    ).stdout


def test_filters_left_by_a_killed_run_are_removed_by_the_next(tmp_path: Path) -> None:
    skip_unless_bpf(TC_OBJECT)
    require_programs("tc")
    remove_leftover_filters(INTERFACE, TC_PROGRAMS)
    clsact_before = has_clsact()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(TC_OBJECT)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"attached\n", holder.stderr.read() if holder.stderr \
            else b""
        handle = f"handle {ECAPTURE_TC_HANDLE:#x}"
        assert "ecap_tc_ingress" in tc_filters("ingress")
        # a live capture's filters are not leftovers: they stay
        assert remove_leftover_filters(INTERFACE, TC_PROGRAMS) == []
        assert handle in tc_filters("egress")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        # the kernel keeps them: nobody removed them
        assert "ecap_tc_ingress" in tc_filters("ingress")
        assert "ecap_tc_egress" in tc_filters("egress")
    finally:
        targets.stop_process(holder, signal.SIGKILL)
    # the next run: leftovers removed on start, its own removed on exit
    with packet_capture(INTERFACE):
        assert "ecap_tc_ingress" in tc_filters("ingress")
    shown = {direction: tc_filters(direction) for direction in ("ingress", "egress")}
    for text in shown.values():
        assert "ecap_tc" not in text and handle not in text, shown
    # The killed run created the clsact qdisc; no later run can know that, so it stays
    # (a qdisc we did not create is never destroyed). The test knows: it removes it when
    # it was not there before and holds no filter.
    if not clsact_before and has_clsact() and not any(shown.values()):
        subprocess.run(["tc", "qdisc", "del", "dev", INTERFACE, "clsact"], timeout=10,
                       check=True)
