"""Compile worker processes: LLVM on every core, and memory that stays flat.

Two reasons to run LLVM outside this process:

- **Parallel code generation.** llvmlite serializes every call into LLVM behind one lock,
  so threads cannot share LLVM's work. A module with thousands of ops is split into parts
  (codegen/split.py); one part compiles here while workers compile the others, and the
  object files are loaded into one engine. Workers are started when a large graph begins
  compiling, so their start overlaps the passes.
- **Leaks.** llvmlite 0.50 keeps about 90 KiB per run of LLVM's optimization pipeline (each
  pass builder allocates instrumentation callbacks that nothing frees). A process that
  compiles a few functions never notices; one that compiles thousands (a server
  specializing per request, a fuzzer) would grow without bound. So after
  IN_PROCESS_COMPILES compilations in a process, every module goes to a worker, and a
  worker is replaced after WORKER_COMPILES modules, which returns its memory to the system.

Any failure of a worker falls back to compiling in process. ``SYMGRAPH_COMPILE_WORKER=0``
turns workers off (no splitting either); ``=1`` sends every module to a worker.

A worker imports only llvmlite and symgraph's CPU target (not the symgraph package), so it
starts in a fraction of a second. Protocol on its stdin/stdout: a request is two 8-byte
little-endian integers (the length of the IR text, the instruction count of the whole
module it belongs to, which sets LLVM's effort) and the text; a reply is one status byte
(0 ok, 1 error), an 8-byte length and the object code or the error message.
"""
from __future__ import annotations

import atexit
import functools
import os
import struct
import subprocess
import sys
import threading

IN_PROCESS_COMPILES = 64
WORKER_COMPILES = 256
MAX_PARTS = 8  # parts of one module, at most: two per usable core, so that the faster
# compilers (a worker that was already running, this process) take more of them

_lock = threading.Lock()
_state = {"compiles": 0, "pid": None}
_idle = []  # started workers waiting for a request
_busy = set()

_READY = b"R"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A bare interpreter's bootstrap: `symgraph` as a package whose __init__ does not run.
_BARE = ("import sys, types; p = types.ModuleType('symgraph'); p.__path__ = [sys.argv[1]];"
         " sys.modules['symgraph'] = p; ")
_BOOTSTRAP = _BARE + "from symgraph.runtime.worker import _serve; _serve()"
_CPU_PROBE = _BARE + ("import llvmlite.binding as llvm; from symgraph.codegen import cpu; "
                      "cpu.target_machine(sys.argv[2], '').emit_object(llvm.parse_assembly(''))")


def _mode() -> str:
    value = os.environ.get("SYMGRAPH_COMPILE_WORKER", "auto").strip().lower()
    if value in ("0", "off", "false", "no"):
        return "off"
    if not os.path.basename(sys.executable or "").lower().startswith("python"):
        return "off"  # an embedding host (not a python binary) cannot run the worker module
    if value in ("1", "on", "true", "yes", "always"):
        return "always"
    return "auto"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parallel_parts() -> int:
    """Parts to split a large module into: 1 when workers are off or there is one core."""
    cores = usable_cores()
    if _mode() == "off" or cores < 2:
        return 1
    return min(MAX_PARTS, 2 * cores)


class _Worker:
    def __init__(self):
        env = dict(os.environ, SYMGRAPH_COMPILE_WORKER="0")
        self.process = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, _PACKAGE_ROOT],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, env=env)
        self.served = 0
        self.ready = False

    def wait_ready(self) -> bool:
        """Block until the worker has started (it sends one byte when it can compile)."""
        if not self.ready:
            try:
                self.ready = _read_exact(self.process.stdout, 1) == _READY
            except (OSError, EOFError, ValueError):
                self.ready = False
            if not self.ready:
                self.process.kill()
        return self.ready

    def alive(self) -> bool:
        return self.process.poll() is None

    def compile(self, llvm_ir: str, size: int) -> bytes | None:
        """Object code, or None when the worker failed or LLVM rejected the module (then the
        caller compiles it in process, which reports the error properly)."""
        proc = self.process
        if not self.wait_ready():
            return None
        try:
            payload = llvm_ir.encode()
            proc.stdin.write(struct.pack("<QQ", len(payload), size) + payload)
            proc.stdin.flush()
            status = _read_exact(proc.stdout, 1)[0]
            (length,) = struct.unpack("<Q", _read_exact(proc.stdout, 8))
            body = _read_exact(proc.stdout, length)
        except (OSError, EOFError, ValueError):
            proc.kill()
            return None
        self.served += 1
        return body if status == 0 else None

    def stop(self, timeout=5):
        try:
            self.process.stdin.close()
            self.process.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


def _read_exact(stream, count: int) -> bytes:
    data = stream.read(count)
    if data is None or len(data) != count:
        raise EOFError("the compile worker closed its pipe")
    return data


def _forget_if_forked():
    """Workers belong to the process that started them: a forked child starts its own."""
    if _state["pid"] != os.getpid():
        _idle.clear()
        _busy.clear()
        _state["pid"] = os.getpid()


def _acquire() -> _Worker:
    with _lock:
        _forget_if_forked()
        while _idle:
            worker = _idle.pop()
            if worker.alive():
                _busy.add(worker)
                return worker
        worker = _Worker()
        _busy.add(worker)
        return worker


def _release(worker: _Worker) -> None:
    with _lock:
        _busy.discard(worker)
        if (worker.alive() and worker.served < WORKER_COMPILES
                and _state["pid"] == os.getpid() and len(_idle) < usable_cores()):
            _idle.append(worker)  # at most one idle worker per core stays
            return
    worker.stop()


def prestart(count: int) -> None:
    """Start workers now so that they are ready when a large module's parts arrive."""
    if _mode() == "off":
        return
    with _lock:
        _forget_if_forked()
        _idle[:] = [w for w in _idle if w.alive()]
        for _ in range(count - len(_idle) - len(_busy)):
            try:
                _idle.append(_Worker())
            except OSError:
                return


def compile_parts(texts, size: int) -> list[bytes]:
    """Object code for each part of one module (`size`: the whole module's instruction
    count). This process and the workers take parts from one queue, each the next part when
    it is free, so a worker still starting takes fewer. The code of a part does not depend
    on who compiles it. This process compiles too for its first IN_PROCESS_COMPILES modules
    (workers off: all of them; SYMGRAPH_COMPILE_WORKER=1: none). A part a worker failed on
    compiles here."""
    from ..codegen import cpu

    mode = _mode()
    with _lock:
        _state["compiles"] += 1
        here = mode == "off" or (mode == "auto" and _state["compiles"] <= IN_PROCESS_COMPILES)
    helpers = 0 if mode == "off" else min(len(texts) - here, max(1, usable_cores() - here))
    objects = [None] * len(texts)
    queue = list(range(len(texts)))
    queue_lock = threading.Lock()

    def take():
        with queue_lock:
            return queue.pop(0) if queue else None

    def remote():
        try:
            worker = _acquire()
        except OSError:
            return
        try:
            if not worker.wait_ready():
                return
            while (i := take()) is not None:
                objects[i] = worker.compile(texts[i], size)
                if objects[i] is None:
                    return
        finally:
            _release(worker)

    threads = [threading.Thread(target=remote, daemon=True) for _ in range(helpers)]
    for t in threads:
        t.start()
    if here:
        while (i := take()) is not None:
            objects[i] = cpu.compile_object(texts[i], cpu.target_machine(), size)
    for t in threads:
        t.join()
    for i, obj in enumerate(objects):
        if obj is None:
            objects[i] = cpu.compile_object(texts[i], cpu.target_machine(), size)
    return objects


@atexit.register
def _shutdown():
    """Stop this process's workers as it exits (they would also exit on their own when their
    pipe closes, but the process would not have waited for them)."""
    with _lock:
        workers = list(_idle) + list(_busy) if _state["pid"] == os.getpid() else []
        _idle.clear()
        _busy.clear()
    for worker in workers:
        worker.stop(timeout=1)


@functools.lru_cache(maxsize=64)
def cpu_name_known(name: str) -> bool:
    """Whether LLVM generates code for the CPU `name`. Asked in a separate interpreter: for
    a name it does not know, LLVM warns, falls back to a subtarget without 64-bit mode and
    then aborts the whole process."""
    try:
        done = subprocess.run([sys.executable, "-c", _CPU_PROBE, _PACKAGE_ROOT, name],
                              capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, SYMGRAPH_COMPILE_WORKER="0"))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "not a recognized processor" not in done.stderr


def worker_pid() -> int:
    """A running worker's process id, or 0 when there is none."""
    with _lock:
        for worker in list(_idle) + list(_busy):
            if worker.alive():
                return worker.process.pid
    return 0


def _serve():
    from ..codegen import cpu

    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    cpu.initialize()
    stdout.write(_READY)
    stdout.flush()
    while True:
        header = stdin.read(16)
        if len(header) != 16:
            return
        length, size = struct.unpack("<QQ", header)
        llvm_ir = _read_exact(stdin, length).decode()
        try:
            reply, status = cpu.compile_object(llvm_ir, cpu.target_machine(), size), 0
        except Exception as exc:  # the parent compiles it again and reports it properly
            reply, status = str(exc).encode(), 1
        stdout.write(bytes([status]) + struct.pack("<Q", len(reply)) + reply)
        stdout.flush()
