"""A tiny model for the inspector's tests: a foldable constant, a repeated product (CSE),
a reduction, and a result that needs the reduction (two kernels and one workspace buffer)."""
import numpy as np

import symgraph as sg

A = sg.Variable("A", shape=(8,), dtype="float32")
B = sg.Variable("B", shape=(8,), dtype="float32")
scale = sg.Constant(np.float32(2.0)) * 3
t = A * B
y = sg.exp(t) + (A * B) * scale
total = sg.sum(y)
w = y / total
