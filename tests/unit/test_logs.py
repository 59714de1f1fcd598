"""--logaddr: the log file follows the same file rules as the events (files.py)."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecapture.errors import ConfigError
from ecapture.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_new_log_file_is_0600_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "ecapture.log"
    setup_logging(debug=False, logaddr=str(path))
    logging.getLogger("ecapture").info("first run")
    setup_logging(debug=False, logaddr=f"file://{path}")
    logging.getLogger("ecapture").info("second run")
    logging.getLogger().handlers[0].flush()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["first run", "second run"]


def test_a_log_symlink_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    target.write_text("root:x:0:0::/root:/bin/sh\n")
    link = tmp_path / "ecapture.log"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match=f"^--logaddr {link}: is a symbolic link"):
        setup_logging(debug=False, logaddr=str(link))
    assert target.read_text() == "root:x:0:0::/root:/bin/sh\n"
