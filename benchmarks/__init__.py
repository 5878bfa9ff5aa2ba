"""FedRad benchmarks: ``fedrad-bench`` (``cli.py``; ``python -m benchmarks.cli``) and the scripts that print figures.

A regular package on purpose: Opacus installs a top-level ``benchmarks`` package of its own, which would
otherwise shadow this folder (a namespace package loses to a regular one anywhere on sys.path).
"""
