"""Build a graph, compile it, run it, and compare its speed with numpy."""
import time

import numpy as np

from symgraph import Constant, Variable, compile

A = Variable("A")
B = Variable("B")
C = B * A
D = C + Constant(1)
f = compile(D)  # passes run now; native code is generated per input signature

d = f(A=np.ones(10), B=np.ones(10) * 2)
print("f(A=ones(10), B=2*ones(10)) =", d)

n = 10_000_000
a, b = np.random.rand(n), np.random.rand(n)
f(A=a, B=b)  # first call specializes for float64[10000000]


def median_seconds(fn, repeat=15):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


t_symgraph = median_seconds(lambda: f(A=a, B=b))
t_numpy = median_seconds(lambda: b * a + 1)
assert np.allclose(f(A=a, B=b), b * a + 1)
print(f"B*A + 1 on {n:,} float64: symgraph {t_symgraph * 1e3:.1f} ms, numpy {t_numpy * 1e3:.1f} ms "
      f"({t_numpy / t_symgraph:.2f}x numpy's speed)")
print()
print("The compiled graph:")
print(f.as_text())
