"""The op registry. Importing this package registers every op."""
from . import control, elementwise, indexing, linalg, movement, nn, reduce, sources  # noqa: F401  (registration)
from .registry import REGISTRY, Op, Typing, get_op

__all__ = ["REGISTRY", "Op", "Typing", "get_op"]
