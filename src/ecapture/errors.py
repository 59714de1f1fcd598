"""One hierarchy for every error the user may see.

`main()` prints an `EcaptureError` as one line on stderr and exits non-zero;
anything else is a bug and keeps its traceback.
"""


class EcaptureError(Exception):
    """Base of the errors that are explained to the user in one line."""


class ConfigError(EcaptureError):
    """A flag or configuration value is invalid; the message names the flag."""


class UnsupportedKernel(EcaptureError):
    """The kernel lacks a feature we need (BTF, ring buffer, uprobes, ...)."""


class PermissionDenied(EcaptureError):
    """Not root, or lacking CAP_BPF/CAP_PERFMON."""


class LibraryNotFound(EcaptureError):
    """No library (or binary) to hook was found."""


class SymbolNotFound(EcaptureError):
    """A symbol to hook is absent from the file."""


class BpfError(EcaptureError):
    """A libbpf call failed; the message carries the errno text."""


class BpfLoadError(BpfError):
    """Loading a BPF object failed; the message ends with the verifier log tail."""


class SinkError(EcaptureError):
    """Delivering events failed (peer gone, disk full): the capture stops."""


class DecodeError(EcaptureError):
    """A kernel record is shorter or otherwise malformed."""


class ProtocolError(EcaptureError):
    """A protocol parser met bytes it cannot parse."""


class RegistryError(EcaptureError):
    """A module name is unknown or registered twice."""
