"""A compile worker process, so that compiling without end does not grow memory without end.

llvmlite 0.50 keeps about 90 KiB per run of LLVM's optimization pipeline: each pass builder
allocates instrumentation callbacks that nothing frees. A process that compiles a few
functions never notices; one that compiles thousands (a server specializing per request, a
fuzzer) would grow without bound. So after IN_PROCESS_COMPILES compilations in a process,
symgraph sends each module's IR to a worker process that optimizes it and emits object code
for this machine, and loads that object code here (as the disk cache does). The worker is
replaced after WORKER_COMPILES modules, which returns its memory to the system. Any failure
of the worker falls back to compiling in process.

``SYMGRAPH_COMPILE_WORKER=0`` turns the worker off; ``=1`` uses it from the first compile.

Protocol on the worker's stdin/stdout: a request is an 8-byte little-endian length and the
IR text; a reply is one status byte (0 ok, 1 error), an 8-byte length and the object code or
the error message.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading

IN_PROCESS_COMPILES = 64
WORKER_COMPILES = 256

_lock = threading.Lock()
_state = {"compiles": 0, "worker": None, "served": 0}


def _mode() -> str:
    value = os.environ.get("SYMGRAPH_COMPILE_WORKER", "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if not os.path.basename(sys.executable or "").lower().startswith("python"):
        return "off"  # an embedding host (not a python binary) cannot run the worker module
    if value in ("1", "on", "true", "yes", "always"):
        return "always"
    return "auto"


def _start():
    env = dict(os.environ, SYMGRAPH_COMPILE_WORKER="0")
    return subprocess.Popen([sys.executable, "-m", "symgraph.runtime.worker"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)


def _stop(worker):
    try:
        worker.stdin.close()
        worker.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        worker.kill()


def _read_exact(stream, count: int) -> bytes:
    data = stream.read(count)
    if data is None or len(data) != count:
        raise EOFError("the compile worker closed its pipe")
    return data


def object_code(llvm_ir: str) -> bytes | None:
    """Object code for `llvm_ir` made by the worker, or None: compile in this process (the
    first IN_PROCESS_COMPILES modules, the worker off, or the worker failed)."""
    mode = _mode()
    with _lock:
        _state["compiles"] += 1
        if mode == "off" or (mode == "auto" and _state["compiles"] <= IN_PROCESS_COMPILES):
            return None
        worker = _state["worker"]
        if worker is not None and _state.get("pid") != os.getpid():
            worker = _state["worker"] = None  # a forked child: the worker is its parent's
        if worker is not None and (_state["served"] >= WORKER_COMPILES or worker.poll() is not None):
            _stop(worker)
            worker = _state["worker"] = None
        try:
            if worker is None:
                worker = _state["worker"] = _start()
                _state["served"], _state["pid"] = 0, os.getpid()
            payload = llvm_ir.encode()
            worker.stdin.write(struct.pack("<Q", len(payload)) + payload)
            worker.stdin.flush()
            status = _read_exact(worker.stdout, 1)[0]
            (length,) = struct.unpack("<Q", _read_exact(worker.stdout, 8))
            body = _read_exact(worker.stdout, length)
        except (OSError, EOFError, ValueError):
            if worker is not None:
                worker.kill()
            _state["worker"] = None
            return None
        _state["served"] += 1
        if status != 0:
            return None  # compiling here reports the error with its usual message
        return body


def worker_pid() -> int:
    """The running worker's process id, or 0 when there is none."""
    worker = _state["worker"]
    return worker.pid if worker is not None and worker.poll() is None else 0


def _serve():
    from ..codegen import cpu
    from .cache import compile_object

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = stdin.read(8)
        if len(header) != 8:
            return
        (length,) = struct.unpack("<Q", header)
        llvm_ir = _read_exact(stdin, length).decode()
        try:
            reply, status = compile_object(llvm_ir, cpu.target_machine()), 0
        except Exception as exc:  # the parent compiles it again and reports it properly
            reply, status = str(exc).encode(), 1
        stdout.write(bytes([status]) + struct.pack("<Q", len(reply)) + reply)
        stdout.flush()


if __name__ == "__main__":
    _serve()
