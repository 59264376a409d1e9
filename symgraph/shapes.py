"""Symbolic sizes: the dimensions a shape-generic compilation leaves open.

A Variable axis declared ``None`` (or named, like ``"batch"``) becomes a `Sym` when a
function is compiled once for all sizes. A `Sym` is a polynomial with integer coefficients
over size symbols, so the arithmetic shape rules and code generation do (products for
element counts, sums for concatenation and workspace offsets) stays exact.

Shape rules ask questions a symbol cannot always answer. The answers are fixed here:

* ``sym == 1`` and ``sym == 0`` are False: a symbolic axis is never assumed to be a
  broadcast axis. When it is 1 at run time, broadcasting it against itself still gives the
  right result, since every operand it meets carries the same symbol.
* ``sym == other`` for another plain symbol or an integer above 1 asks for the two sizes to
  be the same: it raises `Unify`, and specialization starts again with one replaced by the
  other. The compiled code then checks the equality on every call (a call that breaks it
  gets its own specialization, so numpy semantics always hold).
* Anything else that needs a number (ordering, ``int()``, ``range``, floor division that
  does not divide exactly) raises `NotGeneric`: that graph is specialized per shape instead.
"""
from __future__ import annotations

import contextlib
import math
import threading

from .errors import SymgraphError

_state = threading.local()


@contextlib.contextmanager
def unifying():
    """While shape rules run for a generic specialization, size questions between distinct
    symbols raise `Unify`; everywhere else (passes, codegen) equality is structural."""
    before = getattr(_state, "unify", False)
    _state.unify = True
    try:
        yield
    finally:
        _state.unify = before


class NotGeneric(SymgraphError):
    """This graph (or one of its ops) needs concrete sizes: specialize per shape instead."""


class Unify(Exception):
    """A rule needs `a` and `b` to be the same size: retry with them identified."""

    def __init__(self, a, b):
        super().__init__(f"{a} == {b}")
        self.a, self.b = a, b


class Sym:
    """An integer polynomial over size symbols: {monomial: coefficient}, where a monomial
    is a sorted tuple of symbol names (the empty tuple is the constant term)."""

    __slots__ = ("terms", "_hash")

    def __init__(self, terms):
        self.terms = {m: c for m, c in terms.items() if c}
        self._hash = hash(frozenset(self.terms.items()))

    @classmethod
    def symbol(cls, name: str) -> "Sym":
        return cls({(name,): 1})

    # --- arithmetic ------------------------------------------------------------------------
    @staticmethod
    def _terms(x):
        if isinstance(x, Sym):
            return x.terms
        if isinstance(x, int) and not isinstance(x, bool):
            return {(): x} if x else {}
        return None

    @staticmethod
    def make(terms):
        """A Sym, or a plain int when no symbol is left."""
        terms = {m: c for m, c in terms.items() if c}
        if not terms:
            return 0
        if set(terms) == {()}:
            return terms[()]
        return Sym(terms)

    def __add__(self, other):
        o = self._terms(other)
        if o is None:
            return NotImplemented
        out = dict(self.terms)
        for m, c in o.items():
            out[m] = out.get(m, 0) + c
        return Sym.make(out)

    __radd__ = __add__

    def __neg__(self):
        return Sym.make({m: -c for m, c in self.terms.items()})

    def __sub__(self, other):
        o = self._terms(other)
        if o is None:
            return NotImplemented
        return self + Sym.make({m: -c for m, c in o.items()})

    def __rsub__(self, other):
        return (-self) + other

    def __mul__(self, other):
        o = self._terms(other)
        if o is None:
            return NotImplemented
        out = {}
        for m1, c1 in self.terms.items():
            for m2, c2 in o.items():
                m = tuple(sorted(m1 + m2))
                out[m] = out.get(m, 0) + c1 * c2
        return Sym.make(out)

    __rmul__ = __mul__

    def __floordiv__(self, other):
        if isinstance(other, int) and other > 0 and all(c % other == 0 for c in self.terms.values()):
            return Sym.make({m: c // other for m, c in self.terms.items()})
        if isinstance(other, Sym) and len(other.terms) == 1:
            ((mono, coef),) = other.terms.items()
            out = {}
            for m, c in self.terms.items():
                rest = list(m)
                for name in mono:
                    if name not in rest:
                        raise NotGeneric(f"size {self} is not divisible by {other}")
                    rest.remove(name)
                if c % coef:
                    raise NotGeneric(f"size {self} is not divisible by {other}")
                out[tuple(rest)] = c // coef
            return Sym.make(out)
        raise NotGeneric(f"size {self} // {other} is not exact")

    def __mod__(self, other):
        if isinstance(other, int) and other > 0 and all(c % other == 0 for c in self.terms.values()):
            return 0
        raise NotGeneric(f"size {self} % {other} needs concrete sizes")

    # --- questions -------------------------------------------------------------------------
    def is_symbol(self) -> bool:
        """A single symbol with coefficient 1 (what an input axis is)."""
        return len(self.terms) == 1 and next(iter(self.terms.items()))[1] == 1 and len(
            next(iter(self.terms))) == 1

    @property
    def name(self) -> str:
        return next(iter(self.terms))[0]

    def symbols(self) -> set:
        return {s for m in self.terms for s in m}

    def __eq__(self, other):
        if isinstance(other, Sym):
            if self.terms == other.terms:
                return True
            if self.is_symbol() and other.is_symbol() and getattr(_state, "unify", False):
                raise Unify(self, other)
            return False
        if isinstance(other, (int,)) and not isinstance(other, bool):
            if other in (0, 1):
                return False
            if self.is_symbol() and getattr(_state, "unify", False):
                raise Unify(self, other)
            return False
        return NotImplemented

    def __ne__(self, other):
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    def __hash__(self):
        return self._hash

    def _needs_number(self, *_):
        raise NotGeneric(f"an op needs the concrete value of size {self}")

    __lt__ = __le__ = __gt__ = __ge__ = _needs_number
    __int__ = __index__ = __float__ = __bool__ = _needs_number

    def evaluate(self, values: dict) -> int:
        """The size for the given {symbol: value}."""
        return sum(c * math.prod(values[s] for s in m) for m, c in self.terms.items())

    def __repr__(self):
        parts = []
        for m, c in sorted(self.terms.items(), key=lambda t: (-len(t[0]), t[0])):
            body = "*".join(m)
            if not m:
                parts.append(str(c))
            elif c == 1:
                parts.append(body)
            else:
                parts.append(f"{c}*{body}")
        return " + ".join(parts).replace("+ -", "- ")


def evaluate(size, values: dict) -> int:
    """A size (int or Sym) for the given symbol values."""
    return size.evaluate(values) if isinstance(size, Sym) else size


def substitute(size, mapping: dict):
    """Replace symbols by {name: int or Sym}."""
    if not isinstance(size, Sym):
        return size
    total = 0
    for m, c in size.terms.items():
        term = c
        for s in m:
            term = term * mapping.get(s, Sym.symbol(s))
        total = total + term
    return total


def to_json(size):
    """A size as JSON: an int, or {"sym": [[[symbols...], coefficient], ...]}."""
    if isinstance(size, Sym):
        return {"sym": [[list(m), c] for m, c in sorted(size.terms.items())]}
    return int(size)


def from_json(value):
    if isinstance(value, dict):
        return Sym.make({tuple(m): c for m, c in value["sym"]})
    return int(value)


def derived_sizes(g) -> list:
    """The composite sizes in a typed graph's shapes (h - 2 after an unpadded 3x3
    convolution, say): some values of the symbols make them negative, which a call must
    refuse before any code runs. Sorted by their text, so the order is repeatable."""
    found = {d for _, data in g.nodes(data=True) if not isinstance(data["dtype"], tuple)
             for d in data["shape"] if isinstance(d, Sym) and not d.is_symbol()}
    return sorted(found, key=repr)


def contiguous_strides(shape, itemsize: int) -> tuple:
    """Byte strides of a C-contiguous array of `shape` (numpy's, size-0 axes included)."""
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def is_symbolic(shape) -> bool:
    return any(isinstance(d, Sym) for d in shape)


__all__ = ["NotGeneric", "Sym", "Unify", "derived_sizes", "evaluate", "is_symbolic", "substitute", "unifying"]
