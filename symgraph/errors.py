"""Error types and user source locations.

Every error subclasses `SymgraphError` and the builtin a Python user would expect
(`TypeError`, `ValueError`), so existing ``except`` clauses keep working.
"""
from __future__ import annotations

import linecache
import os
import sys
from dataclasses import dataclass

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Loc:
    """Where the user wrote an expression: file, line and function."""

    file: str
    line: int
    function: str = ""

    @property
    def text(self) -> str:
        return linecache.getline(self.file, self.line).strip()

    def __str__(self) -> str:
        text = self.text
        where = f"{os.path.basename(self.file)}:{self.line}"
        return f"{where}: {text}" if text else where


def user_loc() -> Loc | None:
    """The innermost stack frame outside symgraph's own files: the line the user wrote."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_PACKAGE_DIR) and not filename.startswith("<frozen"):
            return Loc(filename, frame.f_lineno, frame.f_code.co_name)
        frame = frame.f_back
    return None


class SymgraphError(Exception):
    """Base class of every error symgraph raises on purpose."""

    def __init__(self, message: str, *, locs=(), hint: str | None = None, details: str = ""):
        self.message = message
        self.locs = tuple(dict.fromkeys(loc for loc in locs if loc is not None))
        self.hint = hint
        self.details = details
        super().__init__(self._format())

    def _format(self) -> str:
        lines = [self.message]
        lines += [f"  at {loc}" for loc in self.locs]
        if self.details:
            lines.append(self.details)
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    def located(self, locs, details: str = "") -> "SymgraphError":
        """Point the error at the user's line(s) and list the operands involved."""
        merged = []
        for loc in tuple(locs) + self.locs:  # the user's line first, then any the rule named
            if loc is not None and loc not in merged:
                merged.append(loc)
        self.locs = tuple(merged)
        self.details = details
        self.args = (self._format(),)
        return self

    def with_context(self, context: str) -> "SymgraphError":
        """Add context (for example the pass that failed) without replacing the message."""
        self.message = f"{self.message}\n  {context}"
        self.args = (self._format(),)
        return self


class ShapeError(SymgraphError, ValueError):
    """Shapes that do not fit an op, or an input of the wrong shape."""


class IndexOutOfRange(SymgraphError, IndexError):
    """An integer index outside its axis, as numpy's IndexError."""


class DTypeError(SymgraphError, TypeError):
    """A dtype an op or symgraph does not support, or an input of the wrong dtype."""


class ArgumentError(SymgraphError, TypeError):
    """A missing, unknown or duplicated input, or an object that is not array-like."""


class GraphError(SymgraphError, ValueError):
    """A malformed graph: bad attributes, duplicate names, invariants broken."""


class TracerBoolError(SymgraphError, TypeError):
    """Python control flow asked for the value of a symbolic expression."""


class CompileError(SymgraphError, RuntimeError):
    """Code generation or a pass failed; the message names the pass or stage."""


class ExecutionError(SymgraphError, ValueError):
    """Native code reported an error (for example integer power with a negative exponent)."""


class OutOfMemory(SymgraphError, MemoryError):
    """A call would need more memory for its outputs and intermediates than the machine has."""


class SerializationError(SymgraphError, ValueError):
    """A saved graph file is malformed, truncated, of another version or hostile."""


class StorageError(SymgraphError, OSError):
    """A file or directory to write (save, export) cannot be written, or a path is not a
    path."""


class NonFiniteError(SymgraphError, FloatingPointError):
    """check_finite found a node that turned finite inputs into NaN or infinity."""
