"""The processor a module puts between its decoded records and the writers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class RecordProcessor(Protocol):
    """Sans-IO: records in, output items out (a `Lost` among them is counted).

    TLS hands its records to the HTTP ConnectionTracker (a fast path of its
    own in the pipeline); shells to the command assembler; a module with no
    processor has its records written as they are.
    """

    def feed(self, record: object) -> Sequence[object]:
        """Items completed by this record."""
        ...

    def expire(self, now_ns: int) -> Sequence[object]:
        """Items to hand over because time passed (called about once a second)."""
        ...

    def flush(self) -> Sequence[object]:
        """Everything still held, at the end of the capture."""
        ...
