"""`make bench`: ratios to a baseline measured in the same invocation (docs/performance.md#method).

Each figure in the printed table is relative to "no tracing" runs interleaved with the traced
runs, with the load average noted per row; a JSON copy goes to bench/results/.
"""
