"""Export to a C shared library: a C program built against it matches Python bit for bit."""
import os
import shutil
import subprocess
import sys

import llvmlite.binding as llvm
import numpy as np
import pytest

import symgraph as sg
from symgraph.codegen import cpu as cpu_target
from symgraph.errors import ArgumentError, CompileError
from symgraph.runtime import export as export_mod

CC = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
needs_cc = pytest.mark.skipif(CC is None, reason="no system C compiler to link the library")
C_TYPES = export_mod.C_TYPES
RNG = np.random.default_rng(0)


def model():
    x = sg.Variable("x", (3, 4), "float64")
    n = sg.Variable("n", (4,), "int32")
    w = sg.Variable("w", (4,), "float32")
    return sg.compile({
        "y": sg.exp(x) * 0.5 + n,
        "mask": x.sum(axis=1) > 2.0,
        "z": sg.tanh(w * 2) + sg.sqrt(w),
        "k": n * 3 - 1,
        "m": x @ np.linspace(0, 1, 8).reshape(4, 2),
        "total": x.sum(),
        "same": n,
    }, name="model")


INPUTS = {"x": RNG.random((3, 4)) * 2, "n": np.array([1, -2, 3, 40], np.int32),
          "w": RNG.random(4).astype(np.float32)}


def c_literal(value, dtype):
    if dtype.kind == "f":
        return float(value).hex()
    if dtype.kind == "b":
        return "true" if value else "false"
    return f"{int(value)}LL" if dtype.itemsize == 8 else str(int(value))


def main_source(name, ins, outs):
    """A C program: fill inputs, run, print outputs exactly; then probe the error paths."""
    lines = ["#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>",
             f'#include "{name}.h"', "int main(void) {"]
    for label, arr in ins:
        vals = ", ".join(c_literal(v, arr.dtype) for v in arr.ravel())
        lines.append(f"    static const {C_TYPES[arr.dtype.name]} {label}[] = {{{vals}}};")
    for label, (shape, dtype) in outs:
        lines.append(f"    {C_TYPES[np.dtype(dtype).name]} *{label} = "
                     f"malloc({max(int(np.prod(shape)), 1)} * sizeof(*{label}));")
    args = [f"{label}, {arr.size}" for label, arr in ins]
    args += [f"{label}, {int(np.prod(shape))}" for label, (shape, _) in outs]
    call = ", ".join(args)
    lines.append(f"    int status = {name}_run({call});")
    lines.append('    if (status) { printf("status %d %s\\n", status, '
                 f'{name}_strerror(status)); return 1; }}')
    for label, (shape, dtype) in outs:
        fmt, cast = {"f": ('"%a\\n"', "(double)"), "b": ('"%d\\n"', "(int)"),
                     "i": ('"%lld\\n"', "(long long)")}[np.dtype(dtype).kind]
        lines.append(f"    for (int i = 0; i < {int(np.prod(shape))}; i++) "
                     f"printf({fmt}, {cast}{label}[i]);")
    # error paths: NULL input, wrong counts, bad output index, workspace variant
    bad_null = call.replace(f"{ins[0][0]}, ", "NULL, ", 1)
    bad_count = call.replace(f"{ins[0][0]}, {ins[0][1].size}", f"{ins[0][0]}, {ins[0][1].size + 1}", 1)
    up = name.upper()
    lines += [
        f'    printf("null %d\\n", {name}_run({bad_null}) == {up}_ERR_NULL);',
        f'    printf("count %d\\n", {name}_run({bad_count}) == {up}_ERR_COUNT);',
        f"    int64_t shape[8];",
        f'    printf("index %d\\n", {name}_output_shape(99, shape) == {up}_ERR_INDEX && '
        f'{name}_output_rank(-1) == -1);',
        f'    printf("shape0 %d %lld\\n", {name}_output_rank(0), (long long)'
        f'({name}_output_shape(0, shape) == 0 ? shape[0] : -1));',
        f'    printf("msg %d\\n", strlen({name}_strerror({up}_ERR_COUNT)) > 0 && '
        f'strlen({name}_strerror(12345)) > 0);',
        f"    int64_t ws_bytes = {name}_workspace_bytes();",
        f"    void *ws = aligned_alloc(64, (size_t)((ws_bytes + 63) / 64 * 64 + 64));",
        f'    printf("ws %d\\n", {name}_run_workspace({call}, ws, ws_bytes) == 0 && '
        f'(ws_bytes == 0 || {name}_run_workspace({call}, (char *)ws + 8, ws_bytes) == '
        f'{up}_ERR_WORKSPACE));',
        "    free(ws);",
    ]
    lines += [f"    free({label});" for label, _ in outs]
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def build_program(tmp_path, f, name):
    lib, header = f.export(tmp_path / "out", name=name)
    assert os.path.exists(lib) and os.path.exists(header)
    exe = tmp_path / "main"
    want = f(**INPUTS)
    keys = list(want)
    ins = [(n, INPUTS[n]) for n in f.inputs]
    outs = [(k, (want[k].shape, want[k].dtype)) for k in keys]
    (tmp_path / "main.c").write_text(main_source(name, ins, outs))
    subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(tmp_path / "main.c"),
                    f"-I{tmp_path / 'out'}", f"-L{tmp_path / 'out'}", f"-l{name}",
                    f"-Wl,-rpath,{tmp_path / 'out'}"], check=True, capture_output=True, text=True)
    return exe, want


def parse(stdout, want):
    lines = stdout.split("\n")
    got, at = {}, 0
    for key, arr in want.items():
        values = lines[at:at + arr.size]
        at += arr.size
        if arr.dtype.kind == "f":
            flat = np.array([float.fromhex(v) for v in values], dtype=arr.dtype)
        else:
            flat = np.array([int(v) for v in values]).astype(arr.dtype)
        got[key] = flat.reshape(arr.shape)
    return got, lines[at:]


@needs_cc
def test_c_program_matches_python(tmp_path):
    f = model()
    exe, want = build_program(tmp_path, f, "model")
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    got, rest = parse(done.stdout, want)
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key
    assert rest[:6] == ["null 1", "count 1", "index 1", "shape0 2 3", "msg 1", "ws 1"]
    header = (tmp_path / "out" / "model.h").read_text()
    assert "int model_run(" in header and "const char *model_strerror(int status);" in header


@needs_cc
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_c_program_is_clean_under_valgrind(tmp_path):
    exe, want = build_program(tmp_path, model(), "vg")
    done = subprocess.run(["valgrind", "--error-exitcode=1", "--leak-check=full",
                           "--errors-for-leak-kinds=all", "--quiet", str(exe)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got, _ = parse(done.stdout, want)
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)


@needs_cc
def test_only_the_c_api_is_exported(tmp_path):
    lib, _ = sg.compile(sg.Variable("a", (2,), "float32") + 1).export(tmp_path, name="tiny")
    if shutil.which("nm") is None:
        pytest.skip("nm is not installed")
    names = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True,
                           text=True).stdout.split()
    exported = {n for n in names if n.startswith("tiny")}
    assert exported == {"tiny_run", "tiny_run_workspace", "tiny_workspace_bytes",
                        "tiny_output_rank", "tiny_output_shape", "tiny_strerror"}


@needs_cc
def test_missing_cpu_features_give_an_error_status(tmp_path, monkeypatch):
    absent = [f for f in export_mod.X86_CHECKABLE if not llvm.get_host_cpu_features().get(f)]
    if not cpu_target.host_is_x86() or not absent:
        pytest.skip("no x86 feature missing from this host to test with")
    real = export_mod._target
    monkeypatch.setattr(export_mod, "_target", lambda cpu: real(cpu)[:2] + ([absent[0]],))
    f = sg.compile(sg.Variable("a", (2,), "float64") * 2)
    f.export(tmp_path, name="cpuchk")
    src = tmp_path / "main.c"
    src.write_text('#include "cpuchk.h"\n#include <stdio.h>\nint main(void) {\n'
                   "    double a[2] = {1, 2}, o[2];\n"
                   '    printf("%d\\n", cpuchk_run(a, 2, o, 2) == CPUCHK_ERR_CPU);\n'
                   "    return 0;\n}\n")
    exe = tmp_path / "main"
    subprocess.run([CC, "-o", str(exe), str(src), f"-I{tmp_path}", f"-L{tmp_path}", "-lcpuchk",
                    f"-Wl,-rpath,{tmp_path}"], check=True)
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout.strip() == "1"


@needs_cc
def test_native_cpu_export(tmp_path):
    lib, _ = model().export(tmp_path, name="nat", cpu="native")
    assert os.path.getsize(lib) > 0


def test_export_needs_declared_shapes_and_dtypes(tmp_path):
    with pytest.raises(ArgumentError, match="declared"):
        sg.compile(sg.Variable("a") * 2).export(tmp_path)
    image = sg.Variable("a", (1, 1, None, 8), "float32")  # strided conv: a floor division
    strided = sg.conv2d(image, np.ones((1, 1, 3, 3), "float32"), stride=2)
    with pytest.raises(ArgumentError, match="cannot be exported with open sizes"):
        sg.compile(strided).export(tmp_path)
    f = sg.compile(sg.Variable("a", (2,), "float64") * 2)
    with pytest.raises(ArgumentError, match="C identifier"):
        f.export(tmp_path, name="not-valid")
    with pytest.raises(ArgumentError, match="cpu"):
        f.export(tmp_path, cpu="x; rm -rf /")


def test_missing_c_compiler_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(export_mod.shutil, "which", lambda name: None)
    f = sg.compile(sg.Variable("a", (2,), "float64") * 2)
    with pytest.raises(CompileError, match="C compiler"):
        f.export(tmp_path, name="nocc")


@needs_cc
def test_cli_export(tmp_path):
    script = tmp_path / "model.py"
    script.write_text("import symgraph as sg\n"
                      "x = sg.Variable('x', (3,), 'float64')\n"
                      "y = sg.exp(x) + 1\nz = x * 2\n")
    done = subprocess.run([sys.executable, "-m", "symgraph", "export", str(script), "-o",
                           str(tmp_path / "out"), "--name", "clim", "--output", "y"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode == 2 and "invalid choice" in done.stderr:
        pytest.skip("this symgraph CLI has no export subcommand")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "libclim.so").exists() and (tmp_path / "out" / "clim.h").exists()
    bad = subprocess.run([sys.executable, "-m", "symgraph", "export", str(script), "-o",
                          str(tmp_path / "out2"), "--output", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "nope" in bad.stderr


GENERIC_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include "gen.h"
int main(int argc, char **argv) {
    int64_t batch = atoll(argv[1]);
    double *x = malloc((size_t)(batch * 3 + 1) * sizeof(double));
    double *y = malloc((size_t)(batch * 2 + 1) * sizeof(double));
    double total[1];
    for (int64_t i = 0; i < batch * 3; i++) x[i] = (double)(i % 7) - 2.5;
    int64_t shape[2];
    if (gen_output_shape(0, shape, batch) || shape[0] != batch || shape[1] != 2) return 2;
    int status = gen_run(x, batch * 3, y, batch * 2, total, 1, batch);
    if (status) { printf("status %d %s\n", status, gen_strerror(status)); return 1; }
    for (int64_t i = 0; i < batch * 2; i++) printf("%a\n", y[i]);
    printf("%a\n", total[0]);
    printf("count %d\n", gen_run(x, batch * 3 + 1, y, batch * 2, total, 1, batch) == GEN_ERR_COUNT);
    printf("negative %d\n", gen_run(x, 0, y, 0, total, 1, -1) == GEN_ERR_COUNT);
    printf("huge %d\n", gen_run(x, 3, y, 2, total, 1, INT64_MAX / 2) == GEN_ERR_COUNT);
    int64_t ws = gen_workspace_bytes(batch);
    void *buffer = aligned_alloc(64, (size_t)((ws + 63) / 64 * 64 + 64));
    printf("ws %d\n", ws >= 0 && gen_run_workspace(x, batch * 3, y, batch * 2, total, 1, batch,
                                                   buffer, ws) == 0);
    free(buffer); free(x); free(y);
    return 0;
}
"""


@needs_cc
def test_open_sizes_export_and_run_from_c(tmp_path):
    """One library for every batch: the size comes after the counts, and counts, output
    shapes and the workspace follow it."""
    x = sg.Variable("x", ("batch", 3), "float64")
    w = np.linspace(-1, 1, 6).reshape(3, 2)
    y = sg.tanh(x @ w) * 2 + 1
    f = sg.compile({"y": y, "total": sg.sum(y * y)}, name="gen")
    lib, header = f.export(tmp_path / "out")
    text = open(header).read()
    assert "int64_t size_batch" in text and "GEN_NUM_SIZES 1" in text
    exe = tmp_path / "main"
    (tmp_path / "main.c").write_text(GENERIC_MAIN)
    subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(tmp_path / "main.c"),
                    f"-I{tmp_path / 'out'}", f"-L{tmp_path / 'out'}", "-lgen",
                    f"-Wl,-rpath,{tmp_path / 'out'}"], check=True, capture_output=True, text=True)
    for batch in (1, 5, 0, 1000):
        data = (np.arange(batch * 3) % 7 - 2.5).reshape(batch, 3)
        want = f(data)
        done = subprocess.run([str(exe), str(batch)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.split("\n")
        got = np.array([float.fromhex(v) for v in lines[:batch * 2]]).reshape(batch, 2)
        np.testing.assert_array_equal(got, want["y"])
        assert float.fromhex(lines[batch * 2]) == want["total"]
        assert lines[batch * 2 + 1:batch * 2 + 5] == ["count 1", "negative 1", "huge 1", "ws 1"]


def test_unknown_cpu_name_is_an_error_not_an_abort(tmp_path):
    """LLVM aborts the process on a CPU name it does not know; export asks a separate
    interpreter first."""
    f = sg.compile(sg.Variable("a", (2,), "float64") * 2)
    with pytest.raises(ArgumentError, match="does not know the CPU"):
        f.export(tmp_path, cpu="nosuchcpu")


@needs_cc
def test_named_cpu_export(tmp_path):
    lib, _ = model().export(tmp_path, name="named", cpu="x86-64-v2" if cpu_target.host_is_x86()
                            else "generic")
    assert os.path.getsize(lib) > 0


@pytest.mark.parametrize("directory", [5, None, "/proc/no/such/dir", "/etc/passwd"])
def test_unwritable_export_directory(directory):
    f = sg.compile(sg.Variable("a", (2,), "float64") * 2)
    with pytest.raises(sg.StorageError) as info:
        f.export(directory)
    assert isinstance(info.value, OSError)


@needs_cc
def test_threaded_export_matches_the_threaded_jit(tmp_path):
    """num_threads=2: the library splits large loops on its own thread pool, and gives the
    JIT's results bit for bit (same chunks, same partial sums)."""
    n = 1 << 21
    x = sg.Variable("x", (n,), "float64")
    f = sg.compile({"y": sg.exp(x) * 0.5, "total": x.sum(), "peak": sg.max(x * x)},
                   name="big", num_threads=2)
    data = (np.arange(n) % 1000) * 0.001 - 0.3  # what the C program fills in
    want = f(x=data)
    lib, header = f.export(tmp_path / "out", name="big", num_threads=2)
    assert "worker thread" in open(header).read()
    symbols = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True,
                             text=True).stdout
    assert "symgraph_pool" not in symbols  # the pool stays private to the library
    program = f"""
#include <stdio.h>
#include <stdlib.h>
#include "big.h"
int main(void) {{
    long n = {n};
    double *x = malloc(n * sizeof(double)), *y = malloc(n * sizeof(double));
    double total, peak;
    for (long i = 0; i < n; i++) x[i] = (i % 1000) * 0.001 - 0.3;
    for (int rep = 0; rep < 3; rep++) {{
        int status = big_run(x, n, y, n, &total, 1, &peak, 1);
        if (status) {{ printf("status %d\\n", status); return 1; }}
    }}
    printf("%a\\n%a\\n", total, peak);
    for (long i = 0; i < 10; i++) printf("%a\\n", y[i]);  /* before and after the 64-byte boundary */
    printf("%a\\n%a\\n", y[n / 2 + 3], y[n - 1]);
    free(x); free(y);
    return 0;
}}
"""
    (tmp_path / "main.c").write_text(program)
    exe = tmp_path / "main"
    subprocess.run([CC, "-std=c11", "-O1", "-o", str(exe), str(tmp_path / "main.c"),
                    f"-I{tmp_path / 'out'}", f"-L{tmp_path / 'out'}", "-lbig",
                    f"-Wl,-rpath,{tmp_path / 'out'}"], check=True, capture_output=True)
    done = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    got = [float.fromhex(v) for v in done.stdout.split()]
    y = want["y"]
    assert got == [float(want["total"]), float(want["peak"]), *y[:10], y[n // 2 + 3], y[-1]]
    if shutil.which("objdump") and cpu_target.host_is_x86():  # the 16 MiB y streams out
        assert "movnt" in subprocess.run(["objdump", "-d", lib], capture_output=True,
                                         text=True).stdout


def test_export_num_threads_is_checked(tmp_path):
    f = sg.compile(sg.Variable("x", (3,), "float64") + 1)
    for bad in (0, 2.0, True, 10**6):
        with pytest.raises(ArgumentError, match="num_threads"):
            f.export(tmp_path / "out", num_threads=bad)
