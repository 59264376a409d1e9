"""A float32 MLP, 512 -> 256 (relu) -> 128 (relu) -> 2, compiled with symgraph and timed
against numpy at batch 1 and batch 256.

The weights are Constants (a trained model baked into the code); the batch is the only
input. Each layer's matmul runs through the generated GEMM, and bias + relu fuse into one
elementwise kernel after it.
"""
import time

import numpy as np

import symgraph as sg

SIZES = (512, 256, 128, 2)


def build(params, batch):
    x = sg.Variable("x", (batch, SIZES[0]), "float32")
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ sg.Constant(w) + sg.Constant(b)
        if i < len(params) - 1:
            h = sg.relu(h)
    return x, h


def numpy_mlp(params, x):
    h = x
    for i, (w, b) in enumerate(params):
        h = h @ w + b
        if i < len(params) - 1:
            h = np.maximum(h, 0)
    return h


def median_seconds(fn, repeat=50):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    rng = np.random.default_rng(0)
    params = [((rng.standard_normal((m, n)) / np.sqrt(m)).astype(np.float32),
               (rng.standard_normal(n) * 0.1).astype(np.float32))
              for m, n in zip(SIZES[:-1], SIZES[1:])]
    for batch in (1, 256):
        x, out = build(params, batch)
        start = time.perf_counter()
        f = sg.compile(out)
        data = rng.standard_normal((batch, SIZES[0])).astype(np.float32)
        got = f(x=data)  # the first call specializes and compiles
        compile_s = time.perf_counter() - start
        want = numpy_mlp(params, data)
        err = float(np.abs(got - want).max())
        t_sg = median_seconds(lambda: f(x=data))
        t_np = median_seconds(lambda: numpy_mlp(params, data))
        print(f"batch {batch:4d}: symgraph {t_sg * 1e6:9.1f} us   numpy {t_np * 1e6:9.1f} us   "
              f"max |diff| {err:.2e}   (compile {compile_s:.2f} s)")


if __name__ == "__main__":
    main()
