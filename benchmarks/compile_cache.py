"""First compile against a compile served by the persistent cache, each in a fresh process.

    python benchmarks/compile_cache.py [--repeat 5] [--layers 12]

Each sample runs a new Python process that builds the same graph and times only
``symgraph.compile`` (imports excluded). "cold" processes start with an empty cache
directory; "warm" ones find the entry the first cold run wrote.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import sys, time
import numpy as np
import symgraph as sg
layers = int(sys.argv[1])
x = sg.Variable("x", (32, 64), "float32")
h = x
rng = np.random.default_rng(0)
for i in range(layers):
    w = rng.standard_normal((64, 64)).astype("float32") * 0.1
    h = sg.tanh(h @ w + float(i)) * sg.sigmoid(h) + sg.exp(-h * h).mean(axis=1, keepdims=True)
t0 = time.perf_counter()
f = sg.compile({"out": h, "score": sg.sum(h)})
print(time.perf_counter() - t0)
"""


def sample(cache_dir, layers):
    env = dict(os.environ, SYMGRAPH_CACHE_DIR=cache_dir)
    env.pop("SYMGRAPH_CACHE", None)
    done = subprocess.run([sys.executable, "-c", CHILD, str(layers)], env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.split()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--layers", type=int, default=12)
    args = p.parse_args(argv)
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as shared:
        for i in range(args.repeat):
            with tempfile.TemporaryDirectory() as empty:
                cold.append(sample(empty, args.layers))
        sample(shared, args.layers)  # fill the entry
        warm = [sample(shared, args.layers) for _ in range(args.repeat)]
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"graph: {args.layers} layers; median of {args.repeat} fresh processes each")
    print(f"  first compile (empty cache): {c * 1e3:8.1f} ms")
    print(f"  cached compile:              {w * 1e3:8.1f} ms")
    print(f"  speedup:                     {c / w:8.1f}x")


if __name__ == "__main__":
    main()
