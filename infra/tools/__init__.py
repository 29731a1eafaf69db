"""Tooling that works on a modalrank checkout but is no part of the runtime package.

The demo data generator (`demo_data` and its parts), the ml-25m-shaped data generator (`scale_data`)
and the benchmarks (`bench`, `bench_scale`). `modalrank demo-data`, `scale-data` and `bench ...` run
them; they import `jobs` and `features`, never the other way round. The wheel built from setup.cfg
ships `jobs` and `features` only, so these commands need a checkout on PYTHONPATH (`source
infra/env.sh`); `infra` itself is a namespace package (no `infra/__init__.py`).
"""
