"""Per-connection parsing of captured plaintext into HTTP exchanges (sans-IO)."""

from ecapture.processor.bodies import decode_body
from ecapture.processor.tracker import ConnectionTracker

__all__ = ["ConnectionTracker", "decode_body"]
