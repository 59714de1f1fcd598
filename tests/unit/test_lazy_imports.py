"""Start-up cost: what importing the command line (and the registry's every module
file) loads, and what a `--format json` TLS capture loads besides (issue 22).

Each check runs in a fresh interpreter (this process has imported everything
already) and lists the heavy modules found in sys.modules: the Python
processor (HTTP parsers, body decoders), the text/HAR/pcapng writers, the
disassembler and the ELF library, asyncio. A module file that imports one
of them at its top again makes the check fail, naming the module.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# Loaded only by the commands, formats and data paths that use them.
PARSERS_AND_DECODERS = (
    "ecapture.processor.http1", "ecapture.processor.http2", "ecapture.processor.hpack_native",
    "ecapture.processor.grpc", "httptools", "hyperframe", "hpack", "brotli", "zstandard",
)
WRITERS = ("ecapture.output.text", "ecapture.output.har", "ecapture.output.keylog")
DISASSEMBLY_AND_ELF = (
    "capstone", "elftools", "ecapture.elf.x86_values", "ecapture.elf.keylog_hook",
    "ecapture.elf.gnutls_keylog", "ecapture.elf.nss_layer", "ecapture.elf.golang",
)
PIPELINE = ("ecapture.pipeline", "ecapture.native_path", "ecapture.processor.tracker",
            "ecapture.output.jsonl", "ecapture.api.controller", "ecapture.api.output",
            "ecapture.api.server", "ecapture.pcap_filter", "asyncio",
            # the registry reads entry_points.txt itself (modules/registry.py)
            "importlib.metadata", "email", "zipfile")
AT_PARSE = (*PARSERS_AND_DECODERS, *WRITERS, *DISASSEMBLY_AND_ELF, *PIPELINE)


def loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """The `watched` modules a fresh interpreter holds after running `code`."""
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps(sorted(name for name in {watched!r} if name in sys.modules)))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def test_the_parser_and_every_module_file_load_nothing_heavy() -> None:
    loaded = loaded_after("""
        from ecapture.cli import build_parser
        from ecapture.modules.registry import MODULES
        build_parser()
        names = {"tls", "gotls", "gnutls", "nss", "bash", "zsh", "mysqld", "postgres"}
        assert names <= set(MODULES), sorted(MODULES)
    """, AT_PARSE)
    assert loaded == [], f"imported by `ecapture --help` and every command: {loaded}"


def test_a_json_capture_loads_no_python_processor_and_no_other_writer() -> None:
    """What --format json needs up to init(): the parsed config, the controller
    (without --listen: no asyncio), the output (sink, JSON writer, the API's event
    tap), the native pipeline's module and the tracker whose limits configure the
    core (no parser until a connection)."""
    loaded = loaded_after("""
        from ecapture.api.controller import Controller
        from ecapture.api.output import Output
        from ecapture.cli import build_parser, parse_config
        import ecapture.native_path
        parsed = parse_config(build_parser(), ["tls", "--format", "json", "--eventaddr", "-"])
        assert parsed is not None
        cls, config = parsed
        Controller(cls, config)  # run_alone() without --listen: no event loop
        module = cls(config)
        output = Output(config, module.name)
        ecapture.native_path.json_sink(output.lend(module.name))
        tracker = module.make_tracker()
        assert tracker is not None and tracker.limits.parse_http
        output.close()
    """, (*PARSERS_AND_DECODERS, *WRITERS, *DISASSEMBLY_AND_ELF, "asyncio", "ssl",
          "importlib.metadata"))
    assert loaded == [], f"imported by a --format json TLS capture: {loaded}"


def test_the_lazy_names_still_load_on_use() -> None:
    """The package names stay importable: each loads its module on first use."""
    loaded = loaded_after("""
        from ecapture.output import TextWriter
        from ecapture.processor import ConnectionTracker, decode_body
        assert TextWriter.__name__ == "TextWriter"
        assert ConnectionTracker.__name__ == "ConnectionTracker" and decode_body(b"x", None)
    """, ("ecapture.output.text", "ecapture.processor.tracker", "ecapture.processor.bodies"))
    assert loaded == ["ecapture.output.text", "ecapture.processor.bodies",
                      "ecapture.processor.tracker"]
