"""ecapture: capture TLS plaintext, shell commands and queries with eBPF uprobes."""

__version__ = "0.1.0"
