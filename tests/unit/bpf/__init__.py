"""Tests of src/ecapture/bpf/ that need no kernel."""
