"""Interactive programs (bash, zsh, psql, sqlite3) driven through a pseudo-terminal.

    with PtyProgram.start(["bash", "--norc", "--noprofile", "-i"], env=...) as shell:
        shell.send("echo M1")                 # waits until the next prompt is shown
        shell.send("for i in 1 2; do", prompt=PS2)

util-linux `script` gives the program a pty that is its controlling terminal
(what a user's shell has); we talk to `script` through pipes. Each line is
sent once the program shows its prompt again (unique markers set through
the environment or flags), so the test never races the shell and never
sleeps a fixed time. Every wait has a timeout; the program is always reaped.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PS1 = "@@ps1@@ "
PS2 = "@@ps2@@ "
PROMPT_TIMEOUT_S = 15.0
EXIT_TIMEOUT_S = 10.0


class PtyError(AssertionError):
    """The program did not show its prompt or did not exit in time."""


def shell_env(**extra: str) -> dict[str, str]:
    """A plain environment with our prompts; no user rc files are read."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent", "TERM": "dumb",
        "LANG": "C.UTF-8", "PS1": PS1, "PS2": PS2, "PROMPT": PS1, "PROMPT2": PS2, **extra,
    }


@dataclass(slots=True)
class PtyProgram:
    process: subprocess.Popen[bytes]
    comm: str  # the program's name as the kernel keeps it
    output: bytearray = field(default_factory=bytearray)
    _seen: int = 0  # output up to here was matched already

    @classmethod
    @contextlib.contextmanager
    def start(
        cls, argv: Sequence[str], *, env: Mapping[str, str], prompt: str = PS1,
        cwd: Path | None = None, user: str | None = None, typescript: Path | None = None,
    ) -> Iterator[PtyProgram]:
        """`typescript`: where script keeps the session (default /dev/null; another
        user may not be allowed to open that)."""
        command = " ".join(_quote(arg) for arg in argv)
        prefix = ["runuser", "-u", user, "--"] if user else []
        process = subprocess.Popen(
            [*prefix, "script", "-qfec", command, str(typescript or "/dev/null")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
            start_new_session=True,
        )
        program = cls(process, Path(argv[0]).name[:15])
        try:
            program.wait_for(prompt)
            yield program
        finally:
            program.close()

    @property
    def program_pid(self) -> int:
        """The pid of the program inside the pty: the first descendant with its comm
        (script runs it through `sh -c`; runuser adds one more parent)."""
        pending = [self.process.pid]
        while pending:
            pid = pending.pop(0)
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == self.comm:
                    return pid
                pending += [int(child) for child in
                            Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except FileNotFoundError:
                continue  # exited meanwhile
        raise PtyError(f"no {self.comm} under script (pid {self.process.pid})")

    def wait_for(self, marker: str, timeout: float = PROMPT_TIMEOUT_S) -> str:
        """Read until `marker` appears in output not matched before; the text up to it."""
        stdout = self.process.stdout
        assert stdout is not None
        wanted = marker.encode()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                found = self.output.find(wanted, self._seen)
                if found >= 0:
                    text = self.output[self._seen:found].decode(errors="replace")
                    self._seen = found + len(wanted)
                    return text
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not selector.select(0)):
                    raise PtyError(f"no {marker!r} within {timeout} s; output so far:\n"
                                   f"{self.output.decode(errors='replace')[-2000:]}")
                if selector.select(min(left, 0.5)):
                    chunk = os.read(stdout.fileno(), 65536)
                    if not chunk:
                        selector.unregister(stdout)
                        self.process.wait(timeout=EXIT_TIMEOUT_S)
                    self.output += chunk

    def send(self, line: str, prompt: str = PS1) -> str:
        """Type `line` and Enter; wait for `prompt`; the output in between."""
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write(line.encode() + b"\n")
        stdin.flush()
        return self.wait_for(prompt)

    def close(self) -> None:
        process = self.process
        if process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert process.stdin is not None
                process.stdin.close()  # EOF: script ends the session
            try:
                process.wait(timeout=EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=EXIT_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()


def _quote(arg: str) -> str:
    safe = all(c.isalnum() or c in "-_./=@:" for c in arg)
    return arg if safe and arg else "'" + arg.replace("'", "'\\''") + "'"
