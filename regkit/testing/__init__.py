"""Helpers for the tests of regkit and of code built on it (plugins, scripts, benchmarks).

Nothing in regkit imports this package. It holds what more than one test module, script or
benchmark needs, so that an oracle is written once:

- :mod:`regkit.testing.arrays`: the numpy/torch × float32/float64 kinds a function must give back;
- :mod:`regkit.testing.oracles`: answers computed apart from regkit's renderers (a ray march);
- :mod:`regkit.testing.levels`: quick 2D–3D registration levels for small detectors.
"""

from __future__ import annotations

__all__: list[str] = []
