"""The persistent compile cache: object code on disk, keyed by everything that shapes it.

A key is a sha256 over a canonical form of the specialized graph (constant bytes included,
source locations not), the compile options and pass pipeline, the entry name, the target
triple, CPU name and features, and the versions of symgraph (plus a digest of its sources,
so a changed compiler misses), llvmlite and LLVM. Passes are deterministic functions of
those, so a hit skips them as well as LLVM. An entry file is ``MAGIC | sha256(payload) |
payload``; the payload holds the key, metadata (workspace size, output types), the object
files (one per part of a module compiled in parallel) and the compressed LLVM IR. An entry whose magic, checksum or key does not match is a
miss and is rewritten. Writes go to a temporary file in the same directory and are renamed
into place, so concurrent writers never leave a torn entry.

``SYMGRAPH_CACHE_DIR`` chooses the directory (default ``$XDG_CACHE_HOME/symgraph`` or
``~/.cache/symgraph``); ``SYMGRAPH_CACHE=0`` turns the cache off.
"""
from __future__ import annotations

import hashlib
import json
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
from ..shapes import Sym
from . import pool

MAGIC = b"SGOBJ\x00\x02\n"
_HEADER = len(MAGIC) + 32
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


def _canon(value, arrays):
    """A canonical, address-free form of an attribute value (arrays go to `arrays`)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return ("F", value.hex())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *[_canon(v, arrays) for v in value])
    if isinstance(value, np.dtype):
        return ("D", value.str)
    if isinstance(value, dict):
        return ("M", *sorted((repr(k), _canon(v, arrays)) for k, v in value.items()))
    if isinstance(value, np.ndarray):
        arrays.append(value)
        return ("A", value.dtype.str, value.shape, len(arrays) - 1)
    if isinstance(value, type) and value in (bool, int, float):
        return ("Y", value.__name__)
    if isinstance(value, np.generic):
        return ("G", value.dtype.str, value.tobytes())
    if isinstance(value, Sym):
        return ("S", tuple(sorted(value.terms.items())))
    raise _Uncacheable(type(value).__name__)  # e.g. traced bodies: no stable form


def cache_key(g, *, name, options, tm_cpu, tm_features) -> str | None:
    """The entry key for a final typed graph, or None when the graph has no stable form."""
    from ..graph import topo_order

    arrays = []
    try:
        nodes = [(n, _canon({k: v for k, v in g.nodes[n].items() if k != "loc"}, arrays))
                 for n in topo_order(g)]
        graph = _canon(dict(g.graph), arrays)
    except _Uncacheable:
        return None
    context = (name, _canon(options, arrays), llvm.get_process_triple(), tm_cpu, tm_features,
               _symgraph_digest(), llvmlite.__version__, tuple(llvm.llvm_version_info))
    h = hashlib.sha256(b"symgraph-cache-1")
    h.update(repr((nodes, graph, context)).encode())
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _path(key):
    return os.path.join(cache_dir(), key[:2], key[2:] + ".o")


def read(key) -> tuple[list, bytes, dict] | None:
    """(object files, zlib-compressed llvm ir, metadata) of the entry; None on a miss or a
    corrupt or stale entry."""
    path = _path(key)
    try:
        with open(path, "rb") as fh:
            blob = fh.read()
    except OSError:
        _count("misses")
        return None
    try:
        if blob[:len(MAGIC)] != MAGIC or len(blob) < _HEADER + 20:
            raise ValueError("bad magic")
        payload = blob[_HEADER:]
        if hashlib.sha256(payload).digest() != blob[len(MAGIC):_HEADER]:
            raise ValueError("checksum")
        (klen,) = struct.unpack_from("<I", payload, 0)
        if payload[4:4 + klen].decode() != key:
            raise ValueError("key")
        at = 4 + klen
        (mlen,) = struct.unpack_from("<I", payload, at)
        meta = json.loads(payload[at + 4:at + 4 + mlen].decode())
        at += 4 + mlen
        (count,) = struct.unpack_from("<I", payload, at)
        at += 4
        objects = []
        for _ in range(count):
            (olen,) = struct.unpack_from("<Q", payload, at)
            objects.append(payload[at + 8:at + 8 + olen])
            if len(objects[-1]) != olen:
                raise ValueError("length")
            at += 8 + olen
        if not objects or not isinstance(meta, dict):
            raise ValueError("contents")
        ir_text = payload[at:]  # compressed; ObjectLibrary inflates it when asked
    except (ValueError, struct.error, UnicodeDecodeError):
        _count("corrupt")
        return None
    _count("hits")
    return objects, ir_text, meta


def write(key, objects, ir_text: str, meta: dict) -> None:
    """Store an entry atomically; failures (read-only disk, full disk) are silently skipped."""
    kb, mb = key.encode(), json.dumps(meta, sort_keys=True).encode()
    payload = (struct.pack("<I", len(kb)) + kb + struct.pack("<I", len(mb)) + mb
               + struct.pack("<I", len(objects))
               + b"".join(struct.pack("<Q", len(obj)) + obj for obj in objects)
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


class ObjectLibrary:
    """Object files loaded into one MCJIT engine, which links their calls to one another
    (the parts of a module compiled in parallel), and the IR they were compiled from."""

    def __init__(self, objects, llvm_ir, name: str):
        cpu.initialize()
        pool.ensure_loaded()  # the symbol parallel loops call
        self.name = name
        self._ir = llvm_ir  # text, or zlib-compressed bytes from a cache entry
        self.optimized_ir = None
        self.tm = cpu.target_machine()
        self.engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), self.tm)
        for obj in objects:
            self.engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self.engine.finalize_object()

    def address(self, symbol: str) -> int:
        address = self.engine.get_function_address(symbol)
        if not address:
            raise CompileError(f"compiled code has no symbol {symbol!r}")
        return address

    @property
    def llvm_ir(self) -> str:
        if isinstance(self._ir, bytes):
            self._ir = zlib.decompress(self._ir).decode()
        return self._ir

    @property
    def asm(self) -> str:
        mod = llvm.parse_assembly(self.llvm_ir)
        tm = cpu.target_machine()
        cpu.optimize(mod, tm, self.llvm_ir)
        return tm.emit_assembly(mod)


def key_for(g, name, options) -> str | None:
    """The entry key of a specialized graph compiled with `options`; None when the cache is
    off or the graph has no stable form."""
    if not enabled():
        return None
    cpu_name, features = host_target()
    return cache_key(g, name=name, options=options, tm_cpu=cpu_name, tm_features=features)


def lookup(key, name):
    """(library, metadata) from a valid entry, or None (a miss, or a corrupt entry)."""
    entry = read(key)
    if entry is None:
        return None
    objects, ir_text, meta = entry
    try:
        return ObjectLibrary(objects, ir_text, name), meta
    except (RuntimeError, CompileError):
        _count("corrupt")  # the checksum matched but LLVM refused it: rebuild
        return None
