"""Run symgraph's benchmark suites in one process and print median tables.

    python benchmarks/run.py                 # every suite
    python benchmarks/run.py --quick         # fewer repeats, no 10,000-node compile
    python benchmarks/run.py --only elementwise compile --json results.json

Peers (numexpr, numba, jax, torch) are optional: a missing one reads "n/a".
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

# Compile times must measure compilation, not the on-disk object cache.
os.environ.setdefault("SYMGRAPH_CACHE", "0")
# Idle OpenMP workers (numba's default threading layer) sleep instead of spinning, so they
# do not steal the two cores from whatever is timed next.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# numpy's OpenBLAS may start a thread per host CPU rather than per CPU this process may use
# (a 256x256 sgemm then takes ~40 ms instead of ~0.3 ms on a 2-core VM); pin it to the cores
# we have, before numpy loads it. An explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(len(os.sched_getaffinity(0))
                                                 if hasattr(os, "sched_getaffinity")
                                                 else os.cpu_count() or 1))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import harness  # noqa: E402

SUITES = ("elementwise", "compile", "memory", "reductions", "matmul", "nn", "train", "gpu")


def machine() -> dict:
    import llvmlite
    import llvmlite.binding as llvm

    info = {"python": platform.python_version(), "numpy": np.__version__,
            "llvmlite": llvmlite.__version__,
            "llvm": ".".join(map(str, llvm.llvm_version_info)),
            "cpu": llvm.get_host_cpu_name(), "cores": os.cpu_count(),
            "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for peer in ("numexpr", "numba", "jax", "torch"):
        mod = harness.optional(peer)
        info[peer] = getattr(mod, "__version__", "installed") if mod else "not installed"
    return info


def _targets_text(targets) -> str:
    rows = []
    for desc, goal, x, ok, *unit in targets:
        unit = unit[0] if unit else "x"
        shown = harness.fmt_ratio(x) if unit == "x" or x is None else f"{x:.1f} {unit}"
        rows.append((desc, goal, shown, "PASS" if ok else "MISS"))
    return harness.table(["target", "goal", "measured", "result"], rows)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic,)):
        return obj.item()
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; skip the largest")
    parser.add_argument("--only", nargs="+", choices=SUITES, metavar="NAME",
                        help=f"suites to run (of {', '.join(SUITES)})")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    info = machine()
    print("symgraph benchmarks: "
          + ", ".join(f"{k}={v}" for k, v in info.items()))
    print("Times are medians over repeated samples (IQR in --json); lower is better.\n")
    results = {"machine": info, "quick": args.quick, "suites": {}}
    all_targets = []
    for name in args.only or SUITES:
        module = __import__({"compile": "compile_time"}.get(name, name))
        t0 = time.perf_counter()
        result = module.run(quick=args.quick)
        elapsed = time.perf_counter() - t0
        print(f"== {name} ({elapsed:.1f} s) " + "=" * max(0, 70 - len(name)))
        print(module.report(result))
        if result.get("targets"):
            print()
            print(_targets_text(result["targets"]))
            all_targets += result["targets"]
        print()
        result["elapsed_s"] = elapsed
        results["suites"][name] = result
    if all_targets:
        passed = sum(1 for t in all_targets if t[3])
        print(f"targets: {passed} PASS, {len(all_targets) - passed} MISS (not asserted)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_jsonable(results), fh, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
