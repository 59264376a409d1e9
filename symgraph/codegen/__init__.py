"""Code generation: graph -> LLVM module (kernel.py), math (mathlib.py), targets (cpu.py)."""
