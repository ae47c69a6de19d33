"""Microbenchmarks of csoftmax against NumPy, SciPy, scikit-learn and PyTorch.

Run ``python -m bench --help`` from the repository root. The modules are:

- :mod:`bench.ops`: the operations, their seeded inputs and a float64 reference;
- :mod:`bench.peers`: the implementations timed (csoftmax and its peers);
- :mod:`bench.timing`: the interleaved timer and its statistics;
- :mod:`bench.runner`: runs one case (verify, then time) and a whole plan;
- :mod:`bench.many_threads`: many Python threads calling at once vs one;
- :mod:`bench.targets`: the performance targets and their PASS/FAIL table;
- :mod:`bench.report`: machine information, Markdown table, JSON and plot;
- :mod:`bench.cli`: the command line (``main``; ``--cpu`` re-runs it per kernel set).
"""

from .cli import main

__all__ = ["main"]
