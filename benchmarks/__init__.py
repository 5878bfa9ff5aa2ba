"""FedRad benchmarks: scripts that print figures (run as ``python -m benchmarks.<name>`` from the repo root).

A regular package on purpose: Opacus installs a top-level ``benchmarks`` package of its own, which would
otherwise shadow this folder (a namespace package loses to a regular one anywhere on sys.path).
"""
