"""A failed load's message ends with the tail of the verifier log libbpf printed."""

from __future__ import annotations

from ecapture.bpf.spec import VERIFIER_LOG_TAIL_LINES, _with_log_tail


def test_last_verifier_log_is_cut_to_its_tail() -> None:
    body = "".join(f"{n}: (b7) r{n % 10} = {n}\n" for n in range(100))
    warnings = [
        "libbpf: prog 'first': -- BEGIN PROG LOAD LOG --\nold log\n-- END PROG LOAD LOG --",
        f"libbpf: prog 'probe': -- BEGIN PROG LOAD LOG --\n{body}"
        "R1 invalid mem access 'scalar'\n-- END PROG LOAD LOG --",
        "libbpf: prog 'probe': failed to load: -13",
    ]
    text = _with_log_tail("loading x.bpf.o: Permission denied (errno 13)", warnings)
    lines = text.splitlines()
    assert lines[0] == "loading x.bpf.o: Permission denied (errno 13)"
    assert lines[1] == f"prog 'probe' verifier log (last {VERIFIER_LOG_TAIL_LINES} lines):"
    assert lines[-1] == "R1 invalid mem access 'scalar'"
    assert len(lines) == 2 + VERIFIER_LOG_TAIL_LINES
    assert "old log" not in text


def test_without_verifier_log_the_warnings_follow() -> None:
    warnings = ["libbpf: failed to find BTF for extern 'x'"]
    text = _with_log_tail("loading x.bpf.o: No such file or directory (errno 2)", warnings)
    assert text.splitlines() == [
        "loading x.bpf.o: No such file or directory (errno 2)",
        "libbpf: failed to find BTF for extern 'x'",
    ]


def test_no_warnings_leaves_the_reason_alone() -> None:
    assert _with_log_tail("reason", []) == "reason"
