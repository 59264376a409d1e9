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
import platform
import re
import shutil
import subprocess
import tempfile

import llvmlite.binding as llvm
import numpy as np

from ..codegen import cpu as cpu_target
from ..codegen.kernel import lower_graph
from ..errors import ArgumentError, CompileError
from ..infer import specialize
from ..passes import run_passes
from .cache import compile_object

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


def _is_x86():
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def baseline_cpu():
    """The CPU exported code targets unless asked otherwise."""
    return "x86-64-v3" if _is_x86() else "generic"


def _target(cpu):
    """(cpu name, LLVM feature string, features to check at run time)."""
    if cpu in (None, "baseline"):
        name = baseline_cpu()
        return name, "", list(X86_V3) if name == "x86-64-v3" else []
    if cpu in ("native", "host"):
        name = llvm.get_host_cpu_name()
        features = llvm.get_host_cpu_features()
        wanted = [f for f in X86_CHECKABLE if features.get(f)] if _is_x86() else []
        return name, features.flatten(), wanted
    if not isinstance(cpu, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", cpu):
        raise ArgumentError(f"cpu must be 'native', 'baseline' or an LLVM CPU name, got {cpu!r}")
    # A named CPU: check the baseline features when it implies them (most x86-64 CPUs do).
    return cpu, "", []


def _ident(text, fallback):
    text = re.sub(r"\W", "_", str(text))
    return text if text.isidentifier() else fallback


def _final_graph(f):
    variables = f.variables
    types = []
    for v in variables:
        shape, dtype = v.attrs.get("shape"), v.attrs.get("dtype")
        name = v.attrs["name"]
        if dtype is None or shape is None:
            raise ArgumentError(f"export needs every input's shape and dtype declared; input "
                                f"{name!r} has shape={shape}, dtype={dtype}", locs=(v.loc,),
                                hint=f"Variable({name!r}, shape=(...), dtype='float64')")
        if not all(isinstance(d, int) for d in shape):
            raise ArgumentError(f"input {name!r} has a polymorphic size (shape {shape}): "
                                "polymorphic sizes are not supported yet by export",
                                locs=(v.loc,), hint="declare every size")
        types.append((tuple(shape), dtype))
    g = specialize(f._template, dict(zip(f.inputs, types)))
    g, _ = run_passes(g, f.passes, verify=f.verify)
    return g


def c_compiler():
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise CompileError("export needs a C compiler to link the library, and none was found",
                           hint="install gcc or clang (or set CC)")
    return cc


def export(f, directory, name=None, cpu=None):
    """Write ``libNAME.so`` and ``NAME.h`` into `directory`; returns (library, header) paths."""
    from .compiled import _math_impl

    name = name or f.name
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name):
        raise ArgumentError(f"export name {name!r} must be a C identifier")
    g = _final_graph(f)
    cpu_name, features, checks = _target(cpu)
    kernel = f"{name}__kernel"
    module = lower_graph(g, kernel, _math_impl())
    try:
        tm = cpu_target.target_machine(cpu_name, features)
    except RuntimeError as exc:
        raise ArgumentError(f"LLVM does not know the CPU {cpu_name!r}: {exc}") from None
    obj = compile_object(str(module), tm)

    ins = [(n, g.nodes[k]["shape"], g.nodes[k]["dtype"]) for n, k in
           zip(f.inputs, _input_nodes(g))]
    keys = f.structure.keys if f.structure.kind == "dict" else None
    taken = {n for n, _, _ in ins} | {f"{n}_count" for n, _, _ in ins}
    outs = []
    for j, k in enumerate(g.graph["outputs"]):
        label = _ident(keys[j], f"out{j}") if keys else f"out{j}"
        if label in taken or f"{label}_count" in taken or label in ("workspace", "status"):
            label = f"out{j}_"
        taken |= {label, f"{label}_count"}
        outs.append((label, g.nodes[k]["shape"], g.nodes[k]["dtype"]))
    workspace = int(g.graph.get("workspace_bytes", 0))

    os.makedirs(directory, exist_ok=True)
    header = _header(name, ins, outs, cpu_name)
    header_path = os.path.join(directory, f"{name}.h")
    lib_path = os.path.join(directory, f"lib{name}.so")
    cc = c_compiler()
    with tempfile.TemporaryDirectory(prefix="symgraph-export-") as tmp:
        with open(os.path.join(tmp, f"{name}.h"), "w") as fh:
            fh.write(header)
        with open(os.path.join(tmp, f"{name}_shim.c"), "w") as fh:
            fh.write(_shim(name, kernel, ins, outs, workspace, checks))
        with open(os.path.join(tmp, f"{name}_kernel.o"), "wb") as fh:
            fh.write(obj)
        with open(os.path.join(tmp, "exports.map"), "w") as fh:
            public = "; ".join(f"{name}_{s}" for s in ("run", "run_workspace", "workspace_bytes",
                                                          "output_rank", "output_shape", "strerror"))
            fh.write(f"{{ global: {public}; local: *; }};\n")
        tmp_lib = os.path.join(tmp, f"lib{name}.so")
        cmd = [cc, "-shared", "-fPIC", "-O2", "-std=c99", "-Wall", "-Werror", "-o", tmp_lib,
               os.path.join(tmp, f"{name}_shim.c"), os.path.join(tmp, f"{name}_kernel.o"),
               "-lm", f"-Wl,--version-script={os.path.join(tmp, 'exports.map')}",
               "-Wl,-z,noexecstack"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CompileError(f"running the C compiler {cc} failed: {exc}") from None
        if done.returncode != 0:
            raise CompileError(f"linking lib{name}.so failed ({cc} exited {done.returncode})",
                               details=done.stderr[-4000:])
        shutil.move(tmp_lib, lib_path)
    with open(header_path, "w") as fh:
        fh.write(header)
    return lib_path, header_path


def _input_nodes(g):
    by_name = {g.nodes[n]["attrs"]["name"]: n for n in g.nodes if g.nodes[n]["op"] == "var"}
    return [by_name[name] for name in g.graph["inputs"]]


def _params(ins, outs):
    params = [f"const {C_TYPES[np.dtype(d).name]} *{n}, int64_t {n}_count" for n, _, d in ins]
    params += [f"{C_TYPES[np.dtype(d).name]} *{n}, int64_t {n}_count" for n, _, d in outs]
    return params


def _count(shape):
    total = 1
    for d in shape:
        total *= d
    return total


def _header(name, ins, outs, cpu_name):
    up = name.upper()
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
        f" * {up}_ERR_CPU. Future versions add, after the counts, one int64_t per",
        " * polymorphic axis; this library has none.",
        " *",
        " * Inputs:",
    ]
    lines += [f" *   {n}: {np.dtype(d).name}{list(s)}" for n, s, d in ins]
    lines += [" * Outputs:"] + [f" *   {n}: {np.dtype(d).name}{list(s)}" for n, s, d in outs]
    lines += [" */", f"#ifndef {up}_H", f"#define {up}_H", "", "#include <stdbool.h>",
              "#include <stdint.h>", "", "#ifdef __cplusplus", 'extern "C" {', "#endif", ""]
    lines += [f"#define {up}_{macro} {i}" for i, (macro, _) in enumerate(STATUS)]
    lines += ["", f"#define {up}_NUM_INPUTS {len(ins)}", f"#define {up}_NUM_OUTPUTS {len(outs)}"]
    lines += [f"#define {up}_{n.upper()}_COUNT {_count(s)}" for n, s, _ in ins + outs]
    params = _params(ins, outs)
    joined = ",\n    ".join(params) if params else "void"
    lines += ["", f"int {name}_run(\n    {joined});", ""]
    lines += [f"int {name}_run_workspace(\n    " + ",\n    ".join(params + [
        "void *workspace", "int64_t workspace_bytes"]) + ");", ""]
    lines += ["/* Bytes of scratch memory one call needs. */",
              f"int64_t {name}_workspace_bytes(void);", "",
              "/* Rank of an output, or -1 for an index out of range. */",
              f"int {name}_output_rank(int output_index);", "",
              "/* Write an output's shape (output_rank entries) for the declared input shapes. */",
              f"int {name}_output_shape(int output_index, int64_t *shape);", "",
              "/* A static message for a status code. */",
              f"const char *{name}_strerror(int status);", "",
              "#ifdef __cplusplus", "}", "#endif", f"#endif /* {up}_H */", ""]
    return "\n".join(lines)


def _shim(name, kernel, ins, outs, workspace, checks):
    up = name.upper()
    params = _params(ins, outs)
    args = [n for n, _, _ in ins] + [n for n, _, _ in outs]
    counts = [f"    if ({n}_count != {_count(s)}) return {up}_ERR_COUNT;" for n, s, _ in ins + outs]
    nulls = [f"    if ({n} == NULL && {_count(s)} != 0) return {up}_ERR_NULL;"
             for n, s, _ in ins + outs]
    cpu_check = " &&\n        ".join(f'__builtin_cpu_supports("{c}")' for c in checks) or "1"
    shapes = []
    for j, (_, s, _) in enumerate(outs):
        dims = "".join(f" shape[{i}] = {d};" for i, d in enumerate(s))
        shapes.append(f"    case {j}:{dims} return {up}_OK;")
    ranks = [f"    case {j}: return {len(s)};" for j, (_, s, _) in enumerate(outs)]
    messages = [f'    case {i}: return "{msg}";' for i, (_, msg) in enumerate(STATUS)]
    kernel_params = ", ".join(["const void *"] * len(ins) + ["void *"] * len(outs) + ["void *"])
    call_args = ", ".join(args + ["workspace"])
    plist = ",\n    ".join(params) if params else "void"
    fwd = ", ".join(f"{a}, {a}_count" for a in args)
    return f"""/* Generated by symgraph: the checked C ABI around the kernel in {name}_kernel.o. */
#include <stddef.h>
#include "{name}.h"

int {kernel}({kernel_params});

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
{chr(10).join(nulls)}
{chr(10).join(counts)}
    if (!cpu_ok()) return {up}_ERR_CPU;
    return {up}_OK;
}}

int {name}_run_workspace(
    {", ".join(params + ["void *workspace", "int64_t workspace_bytes"])})
{{
    int status = check({fwd});
    if (status) return status;
    if (workspace == NULL) return {workspace} ? {up}_ERR_NULL : {name}_run({fwd});
    if (workspace_bytes < {workspace} || ((uintptr_t)workspace & 63u) != 0)
        return {up}_ERR_WORKSPACE;
    return {kernel}({call_args});
}}

int {name}_run(
    {plist})
{{
    int status = check({fwd});
    if (status) return status;
    void *workspace = NULL;  /* the kernel allocates and frees its own */
    return {kernel}({call_args});
}}

int64_t {name}_workspace_bytes(void) {{ return {workspace}; }}

int {name}_output_rank(int output_index)
{{
    switch (output_index) {{
{chr(10).join(ranks)}
    default: return -1;
    }}
}}

int {name}_output_shape(int output_index, int64_t *shape)
{{
    if (shape == NULL) return {up}_ERR_NULL;
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
