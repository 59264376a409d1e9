"""The ``symgraph`` command through ``python -m symgraph``: output, golden text, exit codes.

Regenerate the golden file after an intended change with
``SYMGRAPH_UPDATE_GOLDEN=1 python -m pytest tests/test_cli.py -k golden``.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import symgraph as sg
from symgraph import inspect as insp

DATA = Path(__file__).parent / "data"
TINY = DATA / "tiny_model.py"
OPEN = DATA / "open_model.py"
GOLDEN = DATA / "tiny_model.golden.txt"


def symgraph(*args, env=None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("SYMGRAPH_DEBUG", "SYMGRAPH_DUMP_DIR")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "symgraph", *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd, timeout=300)


def normalized(text):
    return text.replace(str(DATA) + os.sep, "").replace(str(DATA), "<data>")


def test_golden_text():
    done = symgraph("dump-graph", TINY)
    assert done.returncode == 0, done.stderr
    text = normalized(done.stdout)
    if os.environ.get("SYMGRAPH_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
    # deterministic: a second run prints the same
    assert normalized(symgraph("dump-graph", TINY).stdout) == text


def test_text_shows_every_stage_with_its_changes():
    text = symgraph("dump-graph", TINY).stdout
    passes = symgraph("dump-graph", TINY, "--passes").stdout.split()
    f = _compiled_tiny()
    for record in f.pass_log:
        assert f"== after {record.name}: {record.nodes_before} -> {record.nodes_after} nodes" in text
        assert record.name in passes
    assert "removed: %" in text  # dce names the nodes it dropped
    plan = f.memory_plan
    assert f"peak {plan['peak_bytes']:,} bytes vs {plan['no_reuse_bytes']:,} bytes" in text
    assert "buffer=0" in text and "# tiny_model.py:13: w = y / total" in text


def _compiled_tiny():
    namespace = {}
    exec(compile(TINY.read_text(), str(TINY), "exec"), namespace)
    return sg.compile(namespace["w"])


def test_after_one_stage_matches_compiled_text():
    f = _compiled_tiny()
    for stage in ["input", "cse", "final"]:
        done = symgraph("dump-graph", TINY, "--after", stage)
        assert done.returncode == 0
        assert f.as_text(stage) in done.stdout
        assert done.stdout.count("graph(A, B)") == 1


def test_shapes_table():
    done = symgraph("dump-graph", TINY, "--after", "memory", "--shapes")
    assert done.returncode == 0
    table = done.stdout.split("== shapes (memory) ==\n")[1]
    assert re.search(r"^%9\s+add\s+float32\[8\]\s+32\s+0\s+0\s+0", table, re.M)


def test_outputs_pick_other_expressions():
    done = symgraph("dump-graph", TINY, "--output", "total", "--output", "t", "--after", "input")
    assert done.returncode == 0
    assert done.stdout.startswith("# outputs: total, t\n")
    assert "div" not in done.stdout


def test_open_inputs_print_the_unspecialized_graph():
    done = symgraph("dump-graph", OPEN)
    assert done.returncode == 0
    assert "== unspecialized ==" in done.stdout
    assert "%2 = mul %0, %0 : ?" in done.stdout
    assert "shapes/dtypes are needed to run the passes" in done.stdout
    assert "--input for A, B" in done.stdout


@pytest.mark.parametrize("decl, shape, dtype", [
    ("A=float32[1000]", (1000,), "float32"),
    ("A=float64[3,4]", (3, 4), "float64"),
    ("A=float32[]", (), "float32"),
])
def test_input_declarations(decl, shape, dtype):
    done = symgraph("dump-graph", OPEN, "--input", decl, "--input", f"B=[{','.join(map(str, shape))}]",
                    "--after", "input")
    assert done.returncode == 0, done.stderr
    dims = ",".join(map(str, shape))
    assert f"var 'A' : {dtype}[{dims}]" in done.stdout
    assert f"var 'B' : float64[{dims}]" in done.stdout


def test_json_format_round_trips():
    done = symgraph("dump-graph", TINY, "--format", "json")
    assert done.returncode == 0
    doc = json.loads(done.stdout)
    assert doc["schema"] == "symgraph.graph" and doc["stage"] == "final"
    g = insp.graph_from_json(done.stdout)
    assert sg.graph.to_text(g).replace(str(DATA) + os.sep, "") == _compiled_tiny().as_text("final")


def test_dot_format_has_kernel_clusters():
    done = symgraph("dump-graph", TINY, "--format", "dot")
    assert done.returncode == 0
    assert done.stdout.startswith('digraph "final" {')
    f = _compiled_tiny()
    kernels = {d.get("kernel") for _, d in f.graph.nodes(data=True)} - {None}
    assert sorted(int(k) for k in re.findall(r"subgraph cluster_k(\d+)", done.stdout)) == sorted(kernels)


def test_llvm_and_asm():
    done = symgraph("dump-graph", TINY, "--after", "final", "--llvm-opt", "--asm")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "== LLVM IR ==" in out and "== LLVM IR (optimized) ==" in out and "== assembly ==" in out
    assert out.index("== LLVM IR ==") < out.index("== LLVM IR (optimized) ==") < out.index("== assembly ==")
    assert "define" in out.split("== LLVM IR ==")[1]
    llvm_only = symgraph("dump-graph", TINY, "--after", "final", "--llvm").stdout
    assert "== LLVM IR ==" in llvm_only and "optimized" not in llvm_only


def test_svg(tmp_path):
    target = tmp_path / "g.svg"
    done = symgraph("dump-graph", TINY, "--svg", target)
    if shutil.which("dot") is None:
        assert done.returncode == 1
        assert "graphviz" in done.stderr and "apt-get install graphviz" in done.stderr
        assert "Traceback" not in done.stderr
        pytest.skip("graphviz's dot is not on PATH: checked the message instead")
    assert done.returncode == 0, done.stderr
    assert "<svg" in target.read_text()


def test_saved_graph(tmp_path):
    A = sg.Variable("A", shape=(5,), dtype="float64")
    f = sg.compile({"out": sg.exp(A) * 2 + 1})
    done_args = ("dump-graph", "--graph", tmp_path / "m.sg", "--after", "final")
    if not hasattr(sg, "load"):
        done = symgraph(*done_args)
        assert done.returncode == 1 and "not available yet" in done.stderr
        return
    f.save(tmp_path / "m.sg")
    done = symgraph(*done_args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# outputs: out\n")
    assert "exp %0 : float64[5]" in done.stdout
    missing = symgraph("dump-graph", "--graph", tmp_path / "missing.sg")
    assert missing.returncode == 1 and "no such file" in missing.stderr
    (tmp_path / "bad.sg").write_text("not a graph")
    bad = symgraph("dump-graph", "--graph", tmp_path / "bad.sg")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (("dump-graph", DATA / "no_such_model.py"), "no such file"),
    (("dump-graph", DATA), "is a directory"),
    (("dump-graph", TINY, "--output", "nope"), "no module-level expression named 'nope'"),
    (("dump-graph", TINY, "--after", "nope"), "no stage named 'nope'"),
    (("dump-graph", TINY, "--input", "Z=float32[3]"), "--input names 'Z'"),
    (("dump-graph", TINY, "--input", "A=float32[9]"), "input 'A' has shape (9,)"),
    (("dump-graph", TINY, "--disable", "nope"), "unknown pass name"),
    (("dump-graph", OPEN, "--llvm"), "--llvm needs types for input(s) A, B"),
    (("dump-graph", DATA / "failing_model.py"), "raised KeyError: 'b'\n  at failing_model.py:6: "
                                                "ratio = {\"a\": 1}[\"b\"]"),
    (("dump-graph", DATA / "shape_error_model.py"), "at shape_error_model.py:6: y = A + B"),
])
def test_errors_exit_1_with_a_message(args, message):
    done = symgraph(*args)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("symgraph: error: ")
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_debug_shows_the_traceback():
    done = symgraph("dump-graph", TINY, "--after", "nope", env={"SYMGRAPH_DEBUG": "1"})
    assert done.returncode == 1 and "Traceback" in done.stderr
    raised = symgraph("dump-graph", DATA / "failing_model.py", env={"SYMGRAPH_DEBUG": "1"})
    assert raised.returncode == 1 and "KeyError" in raised.stderr and "Traceback" in raised.stderr


@pytest.mark.parametrize("args, message", [
    ((), "required"),
    (("dump-graph",), "needs a MODEL"),
    (("dump-graph", TINY, "--graph", "x.sg"), "needs a MODEL"),
    (("dump-graph", TINY, "--input", "A"), "is not NAME=DTYPE[SHAPE]"),
    (("dump-graph", TINY, "--input", "A=float16[3]"), "float16 is not supported"),
    (("dump-graph", TINY, "--format", "xml"), "invalid choice"),
    (("frobnicate",), "invalid choice"),
])
def test_usage_errors_exit_2(args, message):
    done = symgraph(*args)
    assert done.returncode == 2
    assert message in done.stderr


def test_help_says_the_model_is_executed():
    done = symgraph("dump-graph", "--help")
    assert done.returncode == 0
    assert "executed like `python MODEL`" in " ".join(done.stdout.split())


def test_model_runs_as_main_with_its_folder_on_the_path(tmp_path):
    (tmp_path / "helper.py").write_text("SIZE = 4\n")
    (tmp_path / "model.py").write_text(
        "import sys\nimport symgraph as sg\nfrom helper import SIZE\n"
        "assert __name__ == '__main__' and sys.argv[0].endswith('model.py')\n"
        "A = sg.Variable('A', shape=(SIZE,), dtype='int32')\nb = A * 3\n")
    done = symgraph("dump-graph", "model.py", "--after", "input", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "var 'A' : int32[4]" in done.stdout and "# outputs: b" in done.stdout


def test_main_in_process(capsys):
    from symgraph.cli import main

    assert main(["dump-graph", str(TINY), "--passes"]) == 0
    assert "fuse" in capsys.readouterr().out
    assert main(["dump-graph", str(TINY), "--output", "nope"]) == 1
    assert "nope" in capsys.readouterr().err


def test_open_sizes_stay_symbolic(tmp_path):
    """A model whose Variables declare dtypes and open axes shows symbolic shapes and plans,
    compiles to one generic code, and exports with the sizes as C parameters."""
    model = tmp_path / "batch_model.py"
    model.write_text("import numpy as np\nimport symgraph as sg\n"
                     "x = sg.Variable('x', ('batch', 4), 'float32')\n"
                     "h = x @ np.ones((4, 3), 'float32')\n"
                     "y = sg.tanh(h) * 2 + sg.sum(h, axis=1, keepdims=True)\n")
    done = symgraph("dump-graph", model, "--after", "memory")
    assert done.returncode == 0, done.stderr
    assert "float32[batch,3]" in done.stdout
    assert re.search(r"memory plan: peak \d+\*batch \+ \d+ bytes", done.stdout)
    asm = symgraph("dump-graph", model, "--asm")
    assert asm.returncode == 0 and "symgraph_main" in asm.stdout, asm.stderr
    exported = symgraph("export", model, "-o", tmp_path / "out", "--name", "bm")
    assert exported.returncode == 0, exported.stderr
    assert "int64_t size_batch" in (tmp_path / "out" / "bm.h").read_text()
    strided = tmp_path / "strided.py"
    strided.write_text("import numpy as np\nimport symgraph as sg\n"
                       "x = sg.Variable('x', (1, 1, None, 8), 'float32')\n"
                       "y = sg.conv2d(x, np.ones((1, 1, 3, 3), 'float32'), stride=2)\n")
    refused = symgraph("dump-graph", strided)
    assert refused.returncode == 1 and "needs concrete sizes" in refused.stderr
    assert "--input" in refused.stderr
    ok = symgraph("dump-graph", strided, "--input", "x=float32[1,1,9,8]")
    assert ok.returncode == 0 and "float32[1,1,4,3]" in ok.stdout, ok.stderr
