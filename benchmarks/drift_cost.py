"""The representation drift's share of a run's wall time: the run of the given overrides, with
:meth:`forgetlab.run_drift.DriftProbe.rows` (the probe's forward pass and the CKA of every unit, for
every matrix row) timed by wrapping it.

    FORGETLAB_HOME=... PYTHONPATH=src .venv/bin/python benchmarks/drift_cost.py key=value ...

Prints the run's log, then one JSON line: the run's seconds, the drift's seconds, its calls and share.
docs/drift.md quotes its numbers.
"""

from __future__ import annotations

import json
import sys
import time

from forgetlab import config as config_module
from forgetlab import run_drift
from forgetlab.runner import run


def main(overrides: list[str]) -> None:
    spent = {"seconds": 0.0, "calls": 0}
    original = run_drift.DriftProbe.rows

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - start
            spent["calls"] += 1

    run_drift.DriftProbe.rows = timed
    config = config_module.resolve({}, overrides)
    start = time.perf_counter()
    run(config, log=lambda message: print(message, flush=True))
    total = time.perf_counter() - start
    print(
        json.dumps(
            {
                "overrides": overrides,
                "run_seconds": round(total, 1),
                "drift_seconds": round(spent["seconds"], 1),
                "drift_calls": spent["calls"],
                "share": round(spent["seconds"] / total, 4),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
