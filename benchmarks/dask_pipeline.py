"""A fused elementwise-plus-reduction pipeline over dask arrays: numpy chunks vs symgraph.

    python benchmarks/dask_pipeline.py                       # a LocalCluster, 2 processes
    python benchmarks/dask_pipeline.py --scheduler tcp://host:8786 --rows 20_000_000

The inputs are generated and persisted on the workers first, so the timed part is the
pipeline alone: ``sum(sqrt((a - b)**2 + 1) * w + a * b, axis=0)`` over row chunks, with
``w`` a small numpy vector. Dask with numpy chunk functions makes a temporary per op and
per chunk and sweeps memory once per op; symgraph runs one fused kernel per chunk.
Target: symgraph at least 2x faster. Nothing is asserted; the target prints PASS or MISS.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def pipelines(a, b, w):
    import symgraph as sg
    import symgraph.dask as sgd

    A, B, W = sg.Variable("a"), sg.Variable("b"), sg.Variable("w")
    f = sg.compile(sg.sum(sg.sqrt((A - B) ** 2 + 1) * W + A * B, axis=0))
    return {
        "dask+numpy": (np.sqrt((a - b) ** 2 + 1) * w + a * b).sum(axis=0),
        "dask+symgraph": sgd.apply(f, a=a, b=b, w=w),
    }


def median_time(client, y, repeat):
    client.compute(y).result()  # warm-up: workers load and compile kernels
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        client.compute(y).result()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", help="address of a running dask scheduler "
                        "(default: start a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes")
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=4_000_000)
    parser.add_argument("--cols", type=int, default=16)
    parser.add_argument("--chunk-rows", type=lambda s: int(s.replace("_", "")),
                        default=250_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    import dask.array as da
    from distributed import Client, LocalCluster

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        shape, chunks = (args.rows, args.cols), (args.chunk_rows, args.cols)
        rs = da.random.RandomState(0)
        a, b = client.persist([rs.standard_normal(shape, chunks=chunks),
                               rs.standard_normal(shape, chunks=chunks)])
        w = np.linspace(0.5, 1.5, args.cols)
        gib = 2 * a.nbytes / 2**30
        chunk_mib = args.chunk_rows * args.cols * 8 / 2**20
        print(f"inputs: 2 x {shape} float64 = {gib:.2f} GiB, chunks of {chunk_mib:.1f} MiB, "
              f"{len(client.scheduler_info()['workers'])} workers")
        results, times = {}, {}
        for name, y in pipelines(a, b, w).items():
            times[name], samples = median_time(client, y, args.repeat)
            results[name] = client.compute(y).result()
            spread = ", ".join(f"{s:.3f}" for s in samples)
            print(f"{name:>14}: median {times[name]:.3f} s  [{spread}]")
        ok = np.allclose(results["dask+symgraph"], results["dask+numpy"], rtol=1e-9)
        speedup = times["dask+numpy"] / times["dask+symgraph"]
        print(f"results agree: {ok}; speedup {speedup:.2f}x "
              f"(target >= 2x: {'PASS' if speedup >= 2 else 'MISS'})")
        return speedup
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    main()
