"""A model whose expressions do not fit: symgraph reports the line, not a traceback."""
import symgraph as sg

A = sg.Variable("A", shape=(3,), dtype="float64")
B = sg.Variable("B", shape=(4,), dtype="float64")
y = A + B
