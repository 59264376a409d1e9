"""The process's native thread pool (codegen/threadpool.py), compiled once and kept loaded:
every compiled function's parallel loops run on the same few sleeping workers, and code
can be unloaded without any thread still inside it."""
from __future__ import annotations

import threading

import llvmlite.binding as llvm
from llvmlite import ir

from ..codegen import cpu
from ..codegen.threadpool import POOL_RUN, define_pool

_lock = threading.Lock()
_engine = None  # never freed: the workers live in this code until the process ends


def ensure_loaded() -> None:
    """Compile and load the pool, and make ``symgraph_pool_run`` the symbol every code
    library's parallel loops link to. Idempotent; call before loading compiled code."""
    global _engine
    if _engine is not None:
        return
    with _lock:
        if _engine is not None:
            return
        cpu.initialize()
        module = ir.Module(name="symgraph_pool")
        module.triple = llvm.get_process_triple()
        define_pool(module, linkage="external")
        parsed = llvm.parse_assembly(str(module))
        parsed.verify()
        engine = llvm.create_mcjit_compiler(parsed, cpu.target_machine())
        engine.finalize_object()
        llvm.add_symbol(POOL_RUN, engine.get_function_address(POOL_RUN))
        _engine = engine
