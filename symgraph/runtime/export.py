"""Export a compiled function as a C shared library: ``libNAME.so`` plus ``NAME.h``.

llvmlite emits the object code (position independent, for a baseline CPU unless
``cpu="native"``); a small generated C file (``NAME_shim.c``) gives it a checked C ABI:
NULL pointers, element counts, the workspace and the CPU's features are checked before
the kernel runs, and every failure is a status code. The system C compiler links the two;
the library needs only libc and libm at run time. The interface is documented in the
header and in docs/deployment.md.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import llvmlite.binding as llvm
import numpy as np

from ..codegen import cpu as cpu_target
from ..codegen.kernel import lower_graph
from ..codegen.threadpool import POOL_RUN, define_pool
from ..errors import ArgumentError, CompileError, StorageError
from ..infer import specialize_open
from ..shapes import NotGeneric, Sym, derived_sizes
from ..shapes import substitute as size_substitute
from ..passes import run_passes
from ..serialize import check_path

C_TYPES = {"bool": "bool", "int32": "int32_t", "int64": "int64_t", "float32": "float",
           "float64": "double"}

# Features a baseline (x86-64-v3) object may use, by the names both LLVM and GCC/clang's
# __builtin_cpu_supports know.
X86_V3 = ("sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "bmi", "bmi2", "fma",
          "f16c", "movbe")
X86_CHECKABLE = X86_V3 + ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl",
                          "avx512ifma", "avx512vbmi", "avx512vbmi2", "avx512vnni",
                          "avx512bitalg", "avx512vpopcntdq", "avx512bf16", "avx512fp16",
                          "vaes", "vpclmulqdq", "gfni", "aes", "pclmul", "sha")

STATUS = [  # (macro suffix, message); the first three come from the kernel itself
    ("OK", "success"),
    ("ERR_NEGATIVE_POWER", "integers to negative integer powers are not allowed"),
    ("ERR_NO_MEMORY", "out of memory allocating scratch memory"),
    ("ERR_NULL", "a required pointer argument is NULL"),
    ("ERR_COUNT", "an element count does not match the array's declared shape"),
    ("ERR_CPU", "this CPU lacks instruction set features the library was compiled for"),
    ("ERR_INDEX", "output index out of range"),
    ("ERR_WORKSPACE", "workspace too small or not 64-byte aligned"),
]


def baseline_cpu():
    """The CPU exported code targets unless asked otherwise."""
    return "x86-64-v3" if cpu_target.host_is_x86() else "generic"


def _target(cpu):
    """(cpu name, LLVM feature string, features to check at run time)."""
    if cpu in (None, "baseline"):
        name = baseline_cpu()
        return name, "", list(X86_V3) if name == "x86-64-v3" else []
    if cpu in ("native", "host"):
        name = llvm.get_host_cpu_name()
        features = llvm.get_host_cpu_features()
        wanted = [f for f in X86_CHECKABLE if features.get(f)] if cpu_target.host_is_x86() else []
        return name, features.flatten(), wanted
    if not isinstance(cpu, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", cpu):
        raise ArgumentError(f"cpu must be 'native', 'baseline' or an LLVM CPU name, got {cpu!r}")
    from .worker import cpu_name_known

    if cpu not in (llvm.get_host_cpu_name(), "generic") and not cpu_name_known(cpu):
        raise ArgumentError(f"LLVM does not know the CPU {cpu!r}",
                            hint="use 'native', 'baseline' or a name like 'x86-64-v3', "
                                 "'skylake-avx512', 'znver4'")
    # A named CPU: check the baseline features when it implies them (most x86-64 CPUs do).
    return cpu, "", []


def _ident(text, fallback):
    text = re.sub(r"\W", "_", str(text))
    return text if text.isidentifier() else fallback


def _final_graph(f):
    """The optimized graph to export, and its size symbols (none for static shapes)."""
    variables = f.variables
    types = []
    for v in variables:
        shape, dtype = v.attrs.get("shape"), v.attrs.get("dtype")
        name = v.attrs["name"]
        if dtype is None or shape is None:
            raise ArgumentError(f"export needs every input's shape and dtype declared; input "
                                f"{name!r} has shape={shape}, dtype={dtype}", locs=(v.loc,),
                                hint=f"Variable({name!r}, shape=(...), dtype='float64')")
        types.append((tuple(shape), np.dtype(dtype)))
    try:
        g = specialize_open(f._template, dict(zip(f.inputs, types)))
        g, _ = run_passes(g, f.passes, verify=f.verify)
    except NotGeneric as exc:
        raise _needs_sizes(exc) from None
    return g, list(g.graph.get("symbols", ()))


def _needs_sizes(exc):
    return ArgumentError(f"this graph cannot be exported with open sizes: {exc}",
                         hint="declare every size")


def c_compiler():
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise CompileError("export needs a C compiler to link the library, and none was found",
                           hint="install gcc or clang (or set CC)")
    return cc


def export(f, directory, name=None, cpu=None, num_threads=1):
    """Write ``libNAME.so`` and ``NAME.h`` into `directory`; returns (library, header) paths.

    With ``num_threads`` above 1, large loops split across that many threads, run by the
    library's own copy of the native thread pool (codegen/threadpool.py), as compiled code
    does in Python; results are bit for bit those of ``compile(..., num_threads=N)``."""
    from .compiled import _math_impl, check_num_threads

    name = name or f.name
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise ArgumentError(f"export name {name!r} must be a C identifier")
    check_num_threads(num_threads, "export: ")
    g, symbols = _final_graph(f)
    cpu_name, features, checks = _target(cpu)
    kernel = f"{name}__kernel"
    try:
        module = lower_graph(g, kernel, _math_impl(), num_threads=num_threads,
                             streaming_stores=cpu_target.host_is_x86())
        if POOL_RUN in module.globals:  # parallel loops: the library carries the pool
            define_pool(module, linkage="internal")
        ir_text = str(module)
    except NotGeneric as exc:
        raise _needs_sizes(exc) from None
    try:
        tm = cpu_target.target_machine(cpu_name, features)
    except RuntimeError as exc:
        raise ArgumentError(f"LLVM does not know the CPU {cpu_name!r}: {exc}") from None
    obj = cpu_target.compile_object(ir_text, tm)

    ins = [(n, g.nodes[k]["shape"], g.nodes[k]["dtype"]) for n, k in
           zip(f.inputs, _input_nodes(g))]
    keys = f.structure.keys if f.structure.kind == "dict" else None
    taken = {n for n, _, _ in ins} | {f"{n}_count" for n, _, _ in ins}
    sizes = _size_params(symbols, taken)
    outs = []
    for j, k in enumerate(g.graph["outputs"]):
        label = _ident(keys[j], f"out{j}") if keys else f"out{j}"
        if label in taken or f"{label}_count" in taken or label in ("workspace", "status"):
            label = f"out{j}_"
        taken |= {label, f"{label}_count"}
        outs.append((label, g.nodes[k]["shape"], g.nodes[k]["dtype"]))
    workspace = g.graph.get("workspace_bytes", 0)
    derived = derived_sizes(g)  # checked before anything runs

    check_path("export", directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"export: cannot create the directory {directory}: "
                           f"{exc.strerror or exc}") from None
    header = _header(name, ins, outs, cpu_name, sizes, num_threads)
    header_path = os.path.join(directory, f"{name}.h")
    lib_path = os.path.join(directory, f"lib{name}.so")
    cc = c_compiler()
    with tempfile.TemporaryDirectory(prefix="symgraph-export-") as tmp:
        with open(os.path.join(tmp, f"{name}.h"), "w") as fh:
            fh.write(header)
        with open(os.path.join(tmp, f"{name}_shim.c"), "w") as fh:
            fh.write(_shim(name, kernel, ins, outs, workspace, checks, sizes, derived))
        with open(os.path.join(tmp, f"{name}_kernel.o"), "wb") as fh:
            fh.write(obj)
        with open(os.path.join(tmp, "exports.map"), "w") as fh:
            public = "; ".join(f"{name}_{s}" for s in ("run", "run_workspace", "workspace_bytes",
                                                          "output_rank", "output_shape", "strerror"))
            fh.write(f"{{ global: {public}; local: *; }};\n")
        tmp_lib = os.path.join(tmp, f"lib{name}.so")
        cmd = [cc, "-shared", "-fPIC", "-O2", "-std=c99", "-Wall", "-Werror", "-o", tmp_lib,
               os.path.join(tmp, f"{name}_shim.c"), os.path.join(tmp, f"{name}_kernel.o"),
               "-lm", "-pthread", f"-Wl,--version-script={os.path.join(tmp, 'exports.map')}",
               "-Wl,-z,noexecstack"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CompileError(f"running the C compiler {cc} failed: {exc}") from None
        if done.returncode != 0:
            raise CompileError(f"linking lib{name}.so failed ({cc} exited {done.returncode})",
                               details=done.stderr[-4000:])
        try:
            shutil.move(tmp_lib, lib_path)
            with open(header_path, "w") as fh:
                fh.write(header)
        except OSError as exc:
            raise StorageError(f"export: cannot write into {directory}: "
                               f"{exc.strerror or exc}") from None
    return lib_path, header_path


def _input_nodes(g):
    by_name = {g.nodes[n]["attrs"]["name"]: n for n in g.nodes if g.nodes[n]["op"] == "var"}
    return [by_name[name] for name in g.graph["inputs"]]


def _size_params(symbols, taken):
    """{symbol: C parameter name} for the open sizes, in the kernel's symbol order."""
    out = {}
    for symbol in symbols:
        label = "size_" + _ident(symbol, "axis")
        while label in taken or label in out.values():
            label += "_"
        out[symbol] = label
    return out


def _params(ins, outs, sizes=None):
    params = [f"const {C_TYPES[np.dtype(d).name]} *{n}, int64_t {n}_count" for n, _, d in ins]
    params += [f"{C_TYPES[np.dtype(d).name]} *{n}, int64_t {n}_count" for n, _, d in outs]
    params += [f"int64_t {label}" for label in (sizes or {}).values()]
    return params


def _count(shape):
    total = 1
    for d in shape:
        total *= d
    return total


def _c_size(size, sizes):
    """C expression for a size: a number, or a call evaluating a symbolic size (-1 when it
    overflows int64) from the size parameters."""
    if not isinstance(size, Sym):
        return f"INT64_C({int(size)})"
    terms = ", ".join(f"{{INT64_C({c}), {len(m)}, {{{', '.join(str(list(sizes).index(s)) for s in m) or '0'}}}}}"
                      for m, c in sorted(size.terms.items()))
    return f"poly((const struct term[]){{{terms}}}, {len(size.terms)}, dims)"


def _describe(shape):
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _header(name, ins, outs, cpu_name, sizes=None, num_threads=1):
    up = name.upper()
    sizes = sizes or {}
    threads_note = (" * Large loops run on the calling thread and on up to "
                    f"{num_threads - 1} worker thread(s)\n"
                    " * the library starts on first use and keeps asleep between calls.\n"
                    if num_threads > 1 else " * All work runs on the calling thread.\n")
    size_note = (f" * After the counts come the open sizes ({', '.join(sizes.values())}): the\n"
                 " * shapes below are written in them, and every count must match.\n" if sizes
                 else " * This library has no open (polymorphic) sizes.\n")
    lines = [
        f"/* {name}.h: C interface of lib{name}.so, exported by symgraph.",
        " *",
        f" * {name}_run takes, for each input and then each output, a data pointer (C order,",
        " * contiguous, aligned to its element type; outputs must not overlap inputs or each",
        " * other) and its element count, which must equal the declared size. It allocates",
        f" * its own scratch memory per call; {name}_run_workspace takes a caller-provided",
        f" * workspace of at least {name}_workspace_bytes() bytes, 64-byte aligned, instead.",
        " * Both are thread-safe and return a status: 0 on success, else one of the",
        f" * {up}_ERR_* codes ({name}_strerror explains it). Nothing is written to the",
        " * outputs before the arguments have been checked.",
        f" * Compiled for CPU {cpu_name}; on a CPU without its features every call returns",
        f" * {up}_ERR_CPU.",
        size_note.rstrip("\n"),
        threads_note.rstrip("\n"),
        " *",
        " * Inputs:",
    ]
    rename = {s: label for s, label in sizes.items()}

    def shown(shape):
        return _describe(shape) if not rename else _describe(
            [_rename(d, rename) for d in shape])

    lines += [f" *   {n}: {np.dtype(d).name}{shown(s)}" for n, s, d in ins]
    lines += [" * Outputs:"] + [f" *   {n}: {np.dtype(d).name}{shown(s)}" for n, s, d in outs]
    lines += [" */", f"#ifndef {up}_H", f"#define {up}_H", "", "#include <stdbool.h>",
              "#include <stdint.h>", "", "#ifdef __cplusplus", 'extern "C" {', "#endif", ""]
    lines += [f"#define {up}_{macro} {i}" for i, (macro, _) in enumerate(STATUS)]
    lines += ["", f"#define {up}_NUM_INPUTS {len(ins)}", f"#define {up}_NUM_OUTPUTS {len(outs)}"]
    lines += [f"#define {up}_{n.upper()}_COUNT {_count(s)}" for n, s, _ in ins + outs
              if all(isinstance(d, int) for d in s)]
    lines += [f"#define {up}_NUM_SIZES {len(sizes)}"]
    params = _params(ins, outs, sizes)
    size_args = "".join(f", int64_t {label}" for label in sizes.values())
    joined = ",\n    ".join(params) if params else "void"
    lines += ["", f"int {name}_run(\n    {joined});", ""]
    lines += [f"int {name}_run_workspace(\n    " + ",\n    ".join(params + [
        "void *workspace", "int64_t workspace_bytes"]) + ");", ""]
    lines += ["/* Bytes of scratch memory one call needs (-1: the sizes are invalid). */",
              f"int64_t {name}_workspace_bytes({size_args[2:] or 'void'});", "",
              "/* Rank of an output, or -1 for an index out of range. */",
              f"int {name}_output_rank(int output_index);", "",
              "/* Write an output's shape (output_rank entries) for the given sizes. */",
              f"int {name}_output_shape(int output_index, int64_t *shape{size_args});", "",
              "/* A static message for a status code. */",
              f"const char *{name}_strerror(int status);", "",
              "#ifdef __cplusplus", "}", "#endif", f"#endif /* {up}_H */", ""]
    return "\n".join(lines)


def _rename(size, rename):
    """A size written with C parameter names, for the header's comments."""
    if not isinstance(size, Sym):
        return size
    return repr(size_substitute(size, {s: Sym.symbol(label) for s, label in rename.items()}))


def _shim(name, kernel, ins, outs, workspace, checks, sizes=None, derived=()):
    up = name.upper()
    sizes = sizes or {}
    params = _params(ins, outs, sizes)
    args = [n for n, _, _ in ins] + [n for n, _, _ in outs]
    size_names = list(sizes.values())
    dims_decl = (f"    const int64_t dims[{len(sizes)}] = {{{', '.join(size_names)}}}; (void)dims;\n"
                 if sizes else "    const int64_t *dims = NULL; (void)dims;\n")
    size_checks = [f"    if ({label} < 0) return {up}_ERR_COUNT;" for label in size_names]
    size_checks += [f"    if ({_c_size(d, sizes)} < 0) return {up}_ERR_COUNT;" for d in derived]
    counts = [f"    if ({n}_count != {_c_size(_count(s), sizes)}) return {up}_ERR_COUNT;"
              for n, s, _ in ins + outs]
    nulls = [f"    if ({n} == NULL && {n}_count != 0) return {up}_ERR_NULL;" for n, s, _ in ins + outs]
    cpu_check = " &&\n        ".join(f'__builtin_cpu_supports("{c}")' for c in checks) or "1"
    shapes = []
    for j, (_, shape, _) in enumerate(outs):
        dims = "".join(f" shape[{i}] = {_c_size(d, sizes)};" for i, d in enumerate(shape))
        shapes.append(f"    case {j}:{dims} return {up}_OK;")
    ranks = [f"    case {j}: return {len(s)};" for j, (_, s, _) in enumerate(outs)]
    messages = [f'    case {i}: return "{msg}";' for i, (_, msg) in enumerate(STATUS)]
    kernel_params = ", ".join(["const void *"] * len(ins) + ["void *"] * len(outs) + ["void *"]
                              + (["const int64_t *"] if sizes else []))
    call_args = ", ".join(args + ["workspace"] + (["dims"] if sizes else []))
    plist = ",\n    ".join(params) if params else "void"
    fwd = ", ".join([f"{a}, {a}_count" for a in args] + size_names)
    size_plist = ", ".join(f"int64_t {label}" for label in size_names) or "void"
    size_fwd = ", ".join(size_names)
    workspace_c = _c_size(workspace, sizes)
    return f"""/* Generated by symgraph: the checked C ABI around the kernel in {name}_kernel.o. */
#include <stddef.h>
#include "{name}.h"

int {kernel}({kernel_params});

struct term {{ int64_t coef; int n; int sym[8]; }};

/* A symbolic size: sum of coef * product of sizes; -1 when it overflows. */
static __attribute__((unused)) int64_t poly(const struct term *terms, int n, const int64_t *dims)
{{
    int64_t total = 0;
    for (int t = 0; t < n; t++) {{
        int64_t value = terms[t].coef;
        for (int k = 0; k < terms[t].n; k++)
            if (__builtin_mul_overflow(value, dims[terms[t].sym[k]], &value)) return -1;
        if (__builtin_add_overflow(total, value, &total)) return -1;
    }}
    return total;
}}

static int cpu_ok(void)
{{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return {cpu_check};
#else
    return 1;
#endif
}}

static int check(
    {plist})
{{
{dims_decl}{chr(10).join(size_checks)}
{chr(10).join(nulls)}
{chr(10).join(counts)}
    if (!cpu_ok()) return {up}_ERR_CPU;
    return {up}_OK;
}}

int64_t {name}_workspace_bytes({size_plist})
{{
{dims_decl}{chr(10).join(c.replace(f"return {up}_ERR_COUNT", "return -1") for c in size_checks)}
    return {workspace_c};
}}

int {name}_run_workspace(
    {", ".join(params + ["void *workspace", "int64_t workspace_bytes"])})
{{
    int status = check({fwd});
    if (status) return status;
{dims_decl}    int64_t needed = {name}_workspace_bytes({size_fwd});
    if (workspace == NULL) return needed ? {up}_ERR_NULL : {name}_run({fwd});
    if (workspace_bytes < needed || ((uintptr_t)workspace & 63u) != 0)
        return {up}_ERR_WORKSPACE;
    return {kernel}({call_args});
}}

int {name}_run(
    {plist})
{{
    int status = check({fwd});
    if (status) return status;
{dims_decl}    void *workspace = NULL;  /* the kernel allocates and frees its own */
    return {kernel}({call_args});
}}

int {name}_output_rank(int output_index)
{{
    switch (output_index) {{
{chr(10).join(ranks)}
    default: return -1;
    }}
}}

int {name}_output_shape(int output_index, int64_t *shape{"".join(", int64_t " + n for n in size_names)})
{{
    if (shape == NULL) return {up}_ERR_NULL;
{dims_decl}{chr(10).join(size_checks)}
    switch (output_index) {{
{chr(10).join(shapes)}
    default: return {up}_ERR_INDEX;
    }}
}}

const char *{name}_strerror(int status)
{{
    switch (status) {{
{chr(10).join(messages)}
    default: return "unknown status";
    }}
}}
"""
