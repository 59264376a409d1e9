"""Inputs left open: the inspector needs --input declarations to run the passes."""
import symgraph as sg

A = sg.Variable("A")
B = sg.Variable("B", dtype="float64")
y = sg.sqrt(A * A + B)
