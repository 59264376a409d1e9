"""A model with a bug of its own: the inspector shows the exception at this file's line."""
import symgraph as sg

A = sg.Variable("A", shape=(3,), dtype="float64")
y = A + 1
ratio = {"a": 1}["b"]
