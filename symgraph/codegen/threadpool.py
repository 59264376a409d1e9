"""The native thread pool that parallel kernels run on: LLVM IR over pthreads, no Python.

Starting a thread per parallel loop and joining it cost about 35 us on a 2-core VM, more
than many loops take. Here worker threads start on first use and then wait on a semaphore
between jobs; a job posts one token per helper. Waking a sleeping thread is slow on a VM
(the post is a system call that must wake a halted virtual CPU: 7-11 us for the poster,
20-35 us until the worker runs), so a waiter first polls its semaphore for up to
SPIN_NS (50 us, about the cost of one sleep and wake) and only then sleeps. Kernels that
follow one another in a call, and calls made back to back, then find their helpers awake;
a pool left idle for longer sleeps, and costs no CPU time. A polling thread yields its CPU
every _POLLS_PER_CLOCK_READ polls, so with more threads than cores (num_threads=8 on two)
the threads that still have chunks to run get the cores.

``symgraph_pool_run(fn, arg, threads)`` runs ``fn(arg)`` on the calling thread and on
``threads - 1`` workers at once and returns when all have returned. Kernels pass their
chunk-claiming function (see kernel.py): any number of participants computes the same
chunks, so when the pool is busy with another caller's job (two Python threads calling
compiled code at once), or a worker cannot be started, the caller simply runs the job with
fewer helpers, possibly alone, with the same results. After a fork the child starts its
own workers.

The JIT loads one pool per process (runtime/pool.py); an exported library carries its own
copy, with internal linkage.
"""
from __future__ import annotations

import llvmlite.binding as llvm
from llvmlite import ir

from .emit import I32, I64, PTR, call_pointer, declare
from .loops import emit_loop

POOL_RUN = "symgraph_pool_run"
_SYNC_BYTES = 64  # room for a glibc pthread_mutex_t (40 bytes) or sem_t (32)
SPIN_NS = 50_000  # how long a waiter polls its semaphore before it sleeps
_CLOCK_MONOTONIC = 1
_POLLS_PER_CLOCK_READ = 64
_VOID = ir.VoidType()


def declare_pool_run(module: ir.Module) -> ir.Function:
    """``void symgraph_pool_run(void (*fn)(void *), void *arg, int64 threads)``."""
    return declare(module, POOL_RUN, _VOID, [PTR, PTR, I64])


def define_pool(module: ir.Module, linkage: str = "internal") -> None:
    """Give `module` the pool's definition (state, worker loop and symgraph_pool_run)."""
    run = declare_pool_run(module)
    if run.blocks:
        return
    run.linkage = linkage

    def state(name, ty, init):
        gv = ir.GlobalVariable(module, ty, name=f"symgraph_pool.{name}")
        gv.linkage = "internal"
        gv.initializer = init
        gv.align = 64 if isinstance(ty, ir.ArrayType) else 8
        return gv

    sync_ty = ir.ArrayType(ir.IntType(8), _SYNC_BYTES)
    zero_sync = ir.Constant(sync_ty, None)
    work = state("work", sync_ty, zero_sync)      # a semaphore: one token per helper wanted
    done = state("done", sync_ty, zero_sync)      # a semaphore: one token per helper finished
    submit = state("submit", sync_ty, zero_sync)  # a mutex: one job at a time (zeros: unlocked)
    started = state("started", I64, ir.Constant(I64, 0))
    owner = state("pid", I64, ir.Constant(I64, 0))  # the process the workers belong to
    job_fn = state("fn", PTR, ir.Constant(PTR, None))
    job_arg = state("arg", PTR, ir.Constant(PTR, None))

    trylock = declare(module, "pthread_mutex_trylock", I32, [PTR])
    unlock = declare(module, "pthread_mutex_unlock", I32, [PTR])
    sem_init = declare(module, "sem_init", I32, [PTR, I32, I32])
    sem_wait = declare(module, "sem_wait", I32, [PTR])
    sem_trywait = declare(module, "sem_trywait", I32, [PTR])
    clock_gettime = declare(module, "clock_gettime", I32, [I32, PTR])
    sched_yield = declare(module, "sched_yield", I32, [])
    sem_post = declare(module, "sem_post", I32, [PTR])
    create = declare(module, "pthread_create", I32, [PTR, PTR, PTR, PTR])
    detach = declare(module, "pthread_detach", I32, [I64])
    getpid = declare(module, "getpid", I32, [])
    job_ty = ir.FunctionType(_VOID, [PTR])
    one = ir.Constant(I64, 1)
    zero = ir.Constant(I64, 0)

    relax = _spin_hint(module)
    zero32 = ir.Constant(I32, 0)

    def monotonic_ns(b, timespec):
        b.call(clock_gettime, [ir.Constant(I32, _CLOCK_MONOTONIC), timespec])
        seconds = b.load(b.gep(timespec, [zero, ir.Constant(I32, 0)]), typ=I64)
        nanoseconds = b.load(b.gep(timespec, [zero, ir.Constant(I32, 1)]), typ=I64)
        return b.add(b.mul(seconds, ir.Constant(I64, 1_000_000_000)), nanoseconds)

    def wait_token(b, sem):
        """Take one token of `sem`: poll it (sem_trywait, no system call) for up to SPIN_NS,
        yielding and reading the clock every _POLLS_PER_CLOCK_READ polls, then sleep in
        sem_wait, again when a signal interrupts it. A token already there costs one poll
        (no clock read)."""
        function = b.function
        start, spin, check, sleep, ok = (function.append_basic_block(f"sem.{name}")
                                         for name in ("start", "spin", "clock", "sleep",
                                                      "taken"))
        with b.goto_entry_block():
            timespec = b.alloca(ir.ArrayType(I64, 2), name="timespec")
            polls = b.alloca(I64, name="polls")
            deadline_slot = b.alloca(I64, name="deadline")
        b.cbranch(b.icmp_unsigned("==", b.call(sem_trywait, [sem]), zero32), ok, start)
        b.position_at_end(start)
        b.store(zero, polls)
        b.store(b.add(monotonic_ns(b, timespec), ir.Constant(I64, SPIN_NS)), deadline_slot)
        b.branch(spin)
        b.position_at_end(spin)
        taken = b.icmp_unsigned("==", b.call(sem_trywait, [sem]), zero32)
        polling = function.append_basic_block("sem.poll")
        b.cbranch(taken, ok, polling)
        b.position_at_end(polling)
        relax(b)
        count = b.add(b.load(polls, typ=I64), one)
        b.store(count, polls)
        due = b.icmp_unsigned("==", b.and_(count, ir.Constant(I64, _POLLS_PER_CLOCK_READ - 1)), zero)
        b.cbranch(due, check, spin)
        b.position_at_end(check)
        b.call(sched_yield, [])  # a thread with work waiting for this CPU runs first
        b.cbranch(b.icmp_signed("<", monotonic_ns(b, timespec),
                                b.load(deadline_slot, typ=I64)), spin, sleep)
        b.position_at_end(sleep)
        rc = b.call(sem_wait, [sem])
        b.cbranch(b.icmp_unsigned("==", rc, zero32), ok, sleep)
        b.position_at_end(ok)

    # The worker: take a token, run the job published before it, report, repeat. A worker
    # that finishes before a slower one wakes may take a second token of the same job: the
    # job then finds no chunk left, and the token count still comes out right.
    worker = ir.Function(module, ir.FunctionType(PTR, [PTR]), "symgraph_pool.worker")
    worker.linkage = "internal"
    b = ir.IRBuilder(worker.append_basic_block("entry"))
    top = worker.append_basic_block("next")
    b.branch(top)
    b.position_at_end(top)
    wait_token(b, work)
    call_pointer(b, b.load(job_fn, typ=PTR), job_ty, [b.load(job_arg, typ=PTR)])
    b.call(sem_post, [done])
    b.branch(top)

    # symgraph_pool_run(fn, arg, threads)
    fn, arg, threads = run.args
    b = ir.IRBuilder(run.append_basic_block("entry"))
    alone = run.append_basic_block("alone")
    pooled = run.append_basic_block("pooled")
    b.cbranch(b.icmp_signed("<=", threads, one), alone, pooled)
    b.position_at_end(alone)
    call_pointer(b, fn, job_ty, [arg])
    b.ret_void()
    b.position_at_end(pooled)
    busy = b.icmp_unsigned("!=", b.call(trylock, [submit]), ir.Constant(I32, 0))
    ready = run.append_basic_block("ready")
    b.cbranch(busy, alone, ready)
    b.position_at_end(ready)
    # A new process (first use, or the child of a fork) has no workers yet.
    pid = b.sext(b.call(getpid, []), I64)
    with b.if_then(b.icmp_unsigned("!=", pid, b.load(owner, typ=I64))):
        for sem in (work, done):
            b.call(sem_init, [sem, ir.Constant(I32, 0), ir.Constant(I32, 0)])
        b.store(zero, started)
        b.store(pid, owner)
    helpers = b.sub(threads, one)
    handle = b.alloca(I64, name="handle")
    grow = run.append_basic_block("grow")
    grown = run.append_basic_block("grown")
    b.branch(grow)
    b.position_at_end(grow)
    count = b.load(started, typ=I64)
    more = run.append_basic_block("start_worker")
    b.cbranch(b.icmp_signed("<", count, helpers), more, grown)
    b.position_at_end(more)
    rc = b.call(create, [handle, ir.Constant(PTR, None), worker, ir.Constant(PTR, None)])
    ok = run.append_basic_block("started")
    b.cbranch(b.icmp_unsigned("==", rc, ir.Constant(I32, 0)), ok, grown)
    b.position_at_end(ok)
    b.call(detach, [b.load(handle, typ=I64)])
    b.store(b.add(count, one), started)
    b.branch(grow)
    b.position_at_end(grown)
    count = b.load(started, typ=I64)
    helping = b.select(b.icmp_signed("<", count, helpers), count, helpers)
    b.store(fn, job_fn)
    b.store(arg, job_arg)
    emit_loop(b, helping, lambda i: b.call(sem_post, [work]), "post")  # posting publishes
    call_pointer(b, fn, job_ty, [arg])
    emit_loop(b, helping, lambda i: wait_token(b, done), "collect")
    b.call(unlock, [submit])
    b.ret_void()


def _spin_hint(module: ir.Module):
    """``emit(builder)`` for the CPU's spin-wait hint on `module`'s target (x86 ``pause``,
    AArch64 ``yield``; nothing elsewhere): a polling waiter then saves power and leaves
    issue slots to a sibling hyperthread."""
    triple = module.triple or llvm.get_process_triple()
    if triple.startswith(("x86_64", "i686", "i386")):
        pause = declare(module, "llvm.x86.sse2.pause", _VOID, [])
        return lambda b: b.call(pause, [])
    if triple.startswith(("aarch64", "arm64")):
        hint = declare(module, "llvm.aarch64.hint", _VOID, [I32])
        return lambda b: b.call(hint, [ir.Constant(I32, 1)])  # 1: YIELD
    return lambda b: None
