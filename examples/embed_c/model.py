"""A small model to embed in C: `make` exports it with `symgraph export model.py -o build`.

Module-level expressions are what `symgraph export` can export; --output picks them.
"""
import numpy as np

import symgraph as sg

rng = np.random.default_rng(0)
W = rng.standard_normal((4, 3)).astype(np.float32)
b = np.array([0.1, -0.2, 0.3], dtype=np.float32)

features = sg.Variable("features", (2, 4), "float32")
hidden = sg.tanh(features @ W + b)
scores = sg.sigmoid(hidden).sum(axis=1)
