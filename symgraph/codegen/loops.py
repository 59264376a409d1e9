"""Counted loops for the kernel emitter, in the rotated form LLVM's vectorizer likes."""
from __future__ import annotations

from llvmlite import ir

I64 = ir.IntType(64)


def emit_loop(b: ir.IRBuilder, count: int, body, name: str = "i") -> None:
    """Emit ``for i in range(count): body(i)``; nothing at all when count is 0."""
    if count == 0:
        return
    if count == 1:
        body(ir.Constant(I64, 0))
        return
    pre = b.block
    loop_bb = b.append_basic_block(f"{name}.loop")
    exit_bb = b.append_basic_block(f"{name}.end")
    b.branch(loop_bb)
    b.position_at_end(loop_bb)
    i = b.phi(I64, name=name)
    i.add_incoming(ir.Constant(I64, 0), pre)
    body(i)
    nxt = b.add(i, ir.Constant(I64, 1), name=f"{name}.next", flags=["nuw", "nsw"])
    i.add_incoming(nxt, b.block)
    b.cbranch(b.icmp_unsigned("<", nxt, ir.Constant(I64, count)), loop_bb, exit_bb)
    b.position_at_end(exit_bb)


def emit_nest(b: ir.IRBuilder, shape, body, prefix: str = "i") -> None:
    """Row-major loop nest over `shape`; body receives the list of indices."""

    def level(axis, index):
        if axis == len(shape):
            body(index)
            return
        emit_loop(b, shape[axis], lambda i: level(axis + 1, index + [i]), f"{prefix}{axis}")

    level(0, [])
