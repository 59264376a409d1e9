"""Counted loops for the kernel emitter, in the rotated form LLVM's vectorizer likes."""
from __future__ import annotations

from llvmlite import ir

from ..shapes import NotGeneric, Sym

I64 = ir.IntType(64)


def size_value(b: ir.IRBuilder, size):
    """An i64 for a size: a constant, or for a symbolic size (a shapes.Sym) its polynomial
    over the symbol values the current function loaded on entry (see bind_sizes)."""
    if isinstance(size, ir.Value):
        return size
    if not isinstance(size, Sym):
        return ir.Constant(I64, int(size))
    values = getattr(b.function, "_symgraph_sizes", None)
    if values is None:
        raise NotGeneric(f"size {size} is needed where no size symbols are bound")
    total = None
    for mono, coef in sorted(size.terms.items()):
        term = None if mono and coef == 1 else ir.Constant(I64, coef)
        for symbol in mono:
            term = values[symbol] if term is None else b.mul(term, values[symbol], flags=["nsw"])
        total = term if total is None else b.add(total, term, flags=["nsw"])
    return total


def bind_sizes(b: ir.IRBuilder, dims_ptr, symbols) -> None:
    """Load the size symbols' values (an i64 each, in `symbols` order, from `dims_ptr`) at
    the current point, which must dominate every use: the function's entry."""
    b.function._symgraph_sizes = {
        s: b.load(b.gep(dims_ptr, [ir.Constant(I64, i)], source_etype=I64, inbounds=True),
                  typ=I64, name=f"size.{s}")
        for i, s in enumerate(symbols)}


def emit_loop(b: ir.IRBuilder, count, body, name: str = "i", start=None,
              vector_width: int | None = None) -> None:
    """Emit ``for i in range(start, start + count): body(i)``.

    `count` is a Python int (nothing is emitted for 0) or an i64 value (a guard skips the
    loop when it is not positive); `start` defaults to 0. `vector_width` fixes the SIMD
    width LLVM's loop vectorizer uses, sparing it the search over widths.
    """
    if isinstance(count, Sym):
        count = size_value(b, count)
    dynamic = not isinstance(count, int)
    if not dynamic:
        if count == 0:
            return
        if count == 1 and start is None:
            body(ir.Constant(I64, 0))
            return
    start = ir.Constant(I64, 0) if start is None else start
    end = b.add(start, count if dynamic else ir.Constant(I64, count), name=f"{name}.end")
    pre = b.block
    loop_bb = b.append_basic_block(f"{name}.loop")
    exit_bb = b.append_basic_block(f"{name}.exit")
    if dynamic:
        b.cbranch(b.icmp_signed(">", count, ir.Constant(I64, 0)), loop_bb, exit_bb)
    else:
        b.branch(loop_bb)
    b.position_at_end(loop_bb)
    i = b.phi(I64, name=name)
    i.add_incoming(start, pre)
    body(i)
    nxt = b.add(i, ir.Constant(I64, 1), name=f"{name}.next", flags=["nsw"])
    i.add_incoming(nxt, b.block)
    branch = b.cbranch(b.icmp_signed("<", nxt, end), loop_bb, exit_bb)
    if vector_width:
        branch.set_metadata("llvm.loop", _width_hint(b.module, vector_width))
    b.position_at_end(exit_bb)


def _width_hint(module: ir.Module, width: int):
    """A loop ID (a node whose first operand is itself) asking for `width` SIMD lanes."""
    count = getattr(module, "_symgraph_loops", 0) + 1
    module._symgraph_loops = count
    hint = module.add_metadata([ir.MetaDataString(module, "llvm.loop.vectorize.width"),
                                ir.Constant(ir.IntType(32), width)])
    tag = module.add_metadata([ir.MetaDataString(module, "symgraph.loop"), ir.Constant(I64, count)])
    loop_id = module.add_metadata([None, hint, tag])
    loop_id.operands = (loop_id,) + tuple(loop_id.operands[1:])
    return loop_id


def emit_nest(b: ir.IRBuilder, shape, body, prefix: str = "i", outer=None) -> None:
    """Row-major loop nest over `shape`; body receives the list of indices.

    With `outer=(lo, hi)` (i64 values) the outermost loop covers only [lo, hi): the slice of
    the nest one thread runs.
    """

    def level(axis, index):
        if axis == len(shape):
            body(index)
            return
        step = lambda i: level(axis + 1, index + [i])  # noqa: E731
        if axis == 0 and outer is not None:
            lo, hi = outer
            emit_loop(b, b.sub(hi, lo), step, f"{prefix}{axis}", start=lo)
        else:
            emit_loop(b, shape[axis], step, f"{prefix}{axis}")

    level(0, [])
