"""The persistent compile cache: object code on disk, keyed by everything that shapes it.

A key is a sha256 over a canonical form of the final typed graph (constant bytes included,
source locations not), the compile options, the entry name, the target triple, CPU name and
features, and the versions of symgraph (plus a digest of its sources), llvmlite and LLVM.
An entry file is ``MAGIC | sha256(payload) | payload`` where the payload holds the key, the
object code and the (compressed) LLVM IR; an entry whose magic, checksum or key does not
match is treated as a miss and rewritten. Writes go to a temporary file in the same
directory and are renamed into place, so concurrent writers never leave a torn entry.

``SYMGRAPH_CACHE_DIR`` chooses the directory (default ``$XDG_CACHE_HOME/symgraph`` or
``~/.cache/symgraph``); ``SYMGRAPH_CACHE=0`` turns the cache off.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import threading
import zlib

import llvmlite
import llvmlite.binding as llvm
import numpy as np

from ..codegen import cpu
from ..errors import CompileError

MAGIC = b"SGOBJ\x00\x01\n"
_HEADER = len(MAGIC) + 32
_PLAIN = (type(None), bool, int, float, str, np.dtype, np.ndarray, tuple, list, dict, type)
_stats = {"hits": 0, "misses": 0, "corrupt": 0, "writes": 0}
_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get("SYMGRAPH_CACHE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> str:
    path = os.environ.get("SYMGRAPH_CACHE_DIR")
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "symgraph")
    return path


def stats() -> dict:
    """Process-wide counts of cache hits, misses, corrupt entries found and entries written."""
    return dict(_stats)


def _count(what):
    with _lock:
        _stats[what] += 1


_source_digest = None


def _symgraph_digest() -> str:
    """Version plus a digest of the package sources, so a changed compiler misses."""
    global _source_digest
    if _source_digest is None:
        from .. import __version__

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        h = hashlib.sha256(__version__.encode())
        for folder, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".py"):
                    h.update(os.path.relpath(os.path.join(folder, f), root).encode())
                    with open(os.path.join(folder, f), "rb") as fh:
                        h.update(fh.read())
        _source_digest = h.hexdigest()
    return _source_digest


class _Uncacheable(Exception):
    pass


def _canon(value, h):
    """Feed a canonical, address-free form of an attribute value to the hash."""
    if isinstance(value, np.ndarray):
        h.update(b"A" + value.dtype.str.encode() + repr(value.shape).encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, np.dtype):
        h.update(b"D" + value.str.encode())
    elif isinstance(value, float):
        h.update(b"F" + value.hex().encode())
    elif isinstance(value, (tuple, list)):
        h.update(b"T(" if isinstance(value, tuple) else b"L(")
        for v in value:
            _canon(v, h)
        h.update(b")")
    elif isinstance(value, dict):
        h.update(b"{")
        for k in sorted(value, key=repr):
            _canon(k, h)
            _canon(value[k], h)
        h.update(b"}")
    elif isinstance(value, type) and value in (bool, int, float):
        h.update(b"Y" + value.__name__.encode())
    elif value is None or isinstance(value, (bool, int, str, np.generic)):
        h.update(type(value).__name__.encode() + b":" + repr(value).encode() + b";")
    else:
        raise _Uncacheable(type(value).__name__)  # e.g. traced bodies: no stable form


def cache_key(g, *, name, options, tm_cpu, tm_features) -> str | None:
    """The entry key for a final typed graph, or None when the graph has no stable form."""
    from ..graph import topo_order

    h = hashlib.sha256(b"symgraph-cache-1")
    try:
        for n in topo_order(g):
            data = g.nodes[n]
            _canon(n, h)
            _canon({k: v for k, v in data.items() if k != "loc"}, h)
        _canon({k: v for k, v in g.graph.items()}, h)
    except _Uncacheable:
        return None
    _canon((name, options, llvm.get_process_triple(), tm_cpu, tm_features, _symgraph_digest(),
            llvmlite.__version__, tuple(llvm.llvm_version_info)), h)
    return h.hexdigest()


def _path(key):
    return os.path.join(cache_dir(), key[:2], key[2:] + ".o")


def read(key) -> tuple[bytes, str] | None:
    """(object code, llvm ir) of the entry, or None on a miss or a corrupt or stale entry."""
    path = _path(key)
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError:
        _count("misses")
        return None
    try:
        if blob[:len(MAGIC)] != MAGIC or len(blob) < _HEADER + 12:
            raise ValueError("bad magic")
        payload = blob[_HEADER:]
        if hashlib.sha256(payload).digest() != blob[len(MAGIC):_HEADER]:
            raise ValueError("checksum")
        (klen,) = struct.unpack_from("<I", payload, 0)
        if payload[4:4 + klen].decode() != key:
            raise ValueError("key")
        (olen,) = struct.unpack_from("<Q", payload, 4 + klen)
        start = 12 + klen
        obj = payload[start:start + olen]
        if len(obj) != olen:
            raise ValueError("length")
        ir_text = zlib.decompress(payload[start + olen:]).decode()
    except (ValueError, struct.error, zlib.error, UnicodeDecodeError):
        _count("corrupt")
        return None
    _count("hits")
    return obj, ir_text


def write(key, obj: bytes, ir_text: str) -> None:
    """Store an entry atomically; failures (read-only disk, full disk) are silently skipped."""
    kb = key.encode()
    payload = (struct.pack("<I", len(kb)) + kb + struct.pack("<Q", len(obj)) + obj
               + zlib.compress(ir_text.encode(), 1))
    blob = MAGIC + hashlib.sha256(payload).digest() + payload
    path = _path(key)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError:
        return
    _count("writes")


def clear() -> None:
    """Delete every entry in the cache directory."""
    import shutil

    shutil.rmtree(cache_dir(), ignore_errors=True)


# --- object code ------------------------------------------------------------------------------

def host_target():
    """(cpu name, feature string) the host code is generated for."""
    return llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def compile_object(llvm_ir: str, tm) -> bytes:
    """Verify, optimize and emit an object file for `tm`."""
    cpu.initialize()
    try:
        mod = llvm.parse_assembly(llvm_ir)
        mod.verify()
    except RuntimeError as exc:
        raise CompileError(f"LLVM rejected the generated module: {exc}") from None
    cpu.optimize(mod, tm, cpu.speed_level_for(mod))
    return tm.emit_object(mod)


class ObjectLibrary:
    """Object code loaded into an MCJIT engine: the same interface as CodeLibrary."""

    def __init__(self, obj: bytes, llvm_ir: str, name: str):
        cpu.initialize()
        self.name = name
        self.llvm_ir = llvm_ir
        self.optimized_ir = None
        self.tm = cpu.target_machine()
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.tm)
        self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def address(self, symbol: str) -> int:
        address = self.engine.get_function_address(symbol)
        if not address:
            raise CompileError(f"compiled code has no symbol {symbol!r}")
        return address

    @property
    def asm(self) -> str:
        mod = llvm.parse_assembly(self.llvm_ir)
        tm = cpu.target_machine()
        cpu.optimize(mod, tm, cpu.speed_level_for(mod))
        return tm.emit_assembly(mod)


def load_library(g, ir_module_fn, name, options):
    """A code library for the final graph `g`: from the cache when an entry is valid, else
    compiled (by `ir_module_fn() -> (llvm_ir, ...)`) and stored. None when caching is off."""
    if not enabled():
        return None
    cpu_name, features = host_target()
    key = cache_key(g, name=name, options=options, tm_cpu=cpu_name, tm_features=features)
    if key is None:
        return None
    entry = read(key)
    if entry is not None:
        obj, ir_text = entry
        try:
            return ObjectLibrary(obj, ir_text, name)
        except (RuntimeError, CompileError):
            _count("corrupt")  # checksum matched but LLVM refused it: rebuild below
    ir_text = ir_module_fn()
    obj = compile_object(ir_text, cpu.target_machine())
    library = ObjectLibrary(obj, ir_text, name)
    write(key, obj, ir_text)
    return library
