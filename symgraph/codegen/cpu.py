"""The CPU target: host target machine, LLVM optimization and MCJIT code libraries."""
from __future__ import annotations

import functools
import platform
import threading

import llvmlite.binding as llvm

from ..errors import CompileError

_init_lock = threading.Lock()
_initialized = False


def initialize() -> None:
    global _initialized
    with _init_lock:
        if not _initialized:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()
            _initialized = True


def target_machine(cpu: str | None = None, features: str | None = None, opt: int = 3):
    """A new target machine for the host, or for the named CPU and features.

    Not cached: an MCJIT engine takes ownership of the machine it is given.
    """
    initialize()
    host = llvm.get_host_cpu_name()
    cpu = cpu or host
    if features is None:
        features = llvm.get_host_cpu_features().flatten() if cpu == host else ""
    target = llvm.Target.from_triple(llvm.get_process_triple())
    return target.create_target_machine(cpu=cpu, features=features, opt=opt, reloc="pic",
                                        codemodel="default")


def host_is_x86() -> bool:
    """Whether this process runs on x86 (exports and JIT code target the host's architecture)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


@functools.lru_cache(maxsize=None)
def host_vector_bytes() -> int:
    """Width of the host's SIMD registers: what a vectorized loop fills per instruction."""
    initialize()
    features = llvm.get_host_cpu_features()
    return 64 if features.get("avx512f") else 32 if features.get("avx") else 16


SLP_VECTORIZATION = False

# Past this many instructions, loops are vectorized but not also interleaved and unrolled:
# on large fused bodies that multiplies code size (and LLVM's time) for no measured gain.
LARGE_MODULE_INSTRUCTIONS = 4_000


def optimize(module_ref, tm, llvm_ir: str, speed_level: int | None = None,
             size: int | None = None) -> None:
    """Run LLVM's standard pipeline with loop vectorization on; the effort follows the
    module's size (instructions in `llvm_ir`, its text, or `size`: that of the whole module
    this text is a part of) unless `speed_level` is given."""
    size = ir_size(llvm_ir) if size is None else size
    if speed_level is None:
        speed_level = 1 if size > 60_000 else 3
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = speed_level >= 2
    # LLVM 22's SLP vectorizer miscompiles some small integer kernels (a floor division of
    # a bool array by a broadcast int32 vector, found by the reliability harness; see
    # tests/codegen/test_vectorize.py). symgraph's loops are vectorized by the loop
    # vectorizer, and turning SLP off measured no slower.
    pto.slp_vectorization = SLP_VECTORIZATION
    if size > LARGE_MODULE_INSTRUCTIONS:
        pto.loop_interleaving = False
        pto.loop_unrolling = False
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module_ref, pb)


def ir_size(llvm_ir: str) -> int:
    """Instructions in a module, counted in its text: walking them through the FFI one by
    one, or printing a parsed module again, costs more than the count is worth."""
    return llvm_ir.count("\n  ")


def compile_object(llvm_ir: str, tm, size: int | None = None) -> bytes:
    """Verify, optimize and emit an object file for `tm` (`size` as for optimize)."""
    initialize()
    try:
        mod = llvm.parse_assembly(llvm_ir)
        mod.verify()
    except RuntimeError as exc:
        raise CompileError(f"LLVM rejected the generated module: {exc}") from None
    optimize(mod, tm, llvm_ir, size=size)
    return tm.emit_object(mod)


class CodeLibrary:
    """Owns one compiled module: its stages as text, and the engine that keeps code alive."""

    def __init__(self, ir_module, name: str, keep_stages: bool = False):
        initialize()
        self.name = name
        self.llvm_ir = ir_module if isinstance(ir_module, str) else str(ir_module)
        try:
            mod = llvm.parse_assembly(self.llvm_ir)
            mod.verify()
        except RuntimeError as exc:
            raise CompileError(f"LLVM rejected the generated module: {exc}") from None
        self.tm = target_machine()
        optimize(mod, self.tm, self.llvm_ir)
        self.optimized_ir = str(mod) if keep_stages else None
        self._mod = mod
        self.engine = llvm.create_mcjit_compiler(mod, self.tm)
        self.engine.finalize_object()

    def address(self, symbol: str) -> int:
        return self.engine.get_function_address(symbol)

    @property
    def asm(self) -> str:
        return self.tm.emit_assembly(self._mod)
