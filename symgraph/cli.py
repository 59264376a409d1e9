"""The ``symgraph`` command: ``symgraph dump-graph model.py`` shows a model's graph at every
compilation stage, as text, DOT, JSON or a rendered picture, and its LLVM IR or assembly.

Exit status: 0 on success, 1 for a symgraph error (a formatted message; set SYMGRAPH_DEBUG=1
for the traceback), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import os
import re
import runpy
import shutil
import subprocess
import sys
import traceback

import numpy as np

from . import dtypes as dt
from .errors import DTypeError, SymgraphError

DEBUG = os.environ.get("SYMGRAPH_DEBUG", "") not in ("", "0")
SOURCES = ("var", "const", "scalar")

_INPUT_RE = re.compile(r"^([A-Za-z_]\w*)=([A-Za-z]\w*)?(?:\[([\d,\s]*)\])?$")


class CLIError(SymgraphError):
    """A problem with what the command was asked to do (a missing file, an unknown name)."""


def parse_input(text):
    """``NAME=DTYPE[d0,d1,...]`` (``float32[]`` is 0-d; either part may be left out)."""
    m = _INPUT_RE.match(text.strip())
    if not m or (m.group(2) is None and m.group(3) is None):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NAME=DTYPE[SHAPE] (for example A=float32[1000], B=float64[3,4], "
            f"C=float32[] for 0-d)")
    name, dtype, dims = m.groups()
    if dtype is not None:
        try:
            dtype = dt.as_dtype(dtype, what=f"--input {name}")
        except DTypeError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None
    shape = None
    if dims is not None:
        shape = tuple(int(d) for d in dims.split(",") if d.strip())
    return name, shape, dtype


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="symgraph", description="Inspect symgraph compilations.",
        epilog="Set SYMGRAPH_DEBUG=1 to see tracebacks for errors.")
    parser.add_argument("--version", action="version", version=f"symgraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "dump-graph", help="show a model's graph before and after each compiler pass",
        description=(
            "Show the graph of MODEL before the compiler passes and after each one, with what "
            "each pass changed. MODEL is a Python file that builds symgraph expressions at "
            "module level; it is executed like `python MODEL` (its code runs, with __name__ "
            "set to '__main__'), so only inspect files you trust. By default the sinks are "
            "shown: module-level expressions no other module-level expression uses."),
        epilog=("examples:\n  symgraph dump-graph model.py --input A=float32[1000]\n"
                "  symgraph dump-graph model.py --after fuse --format dot\n"
                "  symgraph dump-graph model.py --svg graph.svg\n"
                "input declarations: NAME=DTYPE[SHAPE], e.g. A=float64[3,4]; float32[] is 0-d"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="Python file building expressions (run like `python MODEL`)")
    p.add_argument("--graph", metavar="FILE", help="read a graph saved by symgraph.save instead")
    p.add_argument("--output", "-o", action="append", default=[], metavar="NAME",
                   help="module-level expression to show (repeatable; default: the sinks)")
    p.add_argument("--input", "-i", action="append", default=[], type=parse_input,
                   metavar="NAME=DTYPE[SHAPE]",
                   help="declare an input's dtype and shape where MODEL leaves them open")
    p.add_argument("--after", metavar="PASS",
                   help="show only the graph after this pass ('input' and 'final' also work)")
    p.add_argument("--passes", action="store_true", help="list the stages and what each pass did")
    p.add_argument("--shapes", action="store_true",
                   help="add a per-node table of shape, dtype, bytes, kernel and buffer")
    p.add_argument("--format", choices=("text", "dot", "json"), default="text",
                   help="text (every stage), or dot/json (one stage: --after, default final)")
    p.add_argument("--svg", metavar="FILE", help="render the graph to SVG with graphviz's dot")
    p.add_argument("--png", metavar="FILE", help="render the graph to PNG with graphviz's dot")
    p.add_argument("--llvm", action="store_true", help="print the LLVM IR")
    p.add_argument("--llvm-opt", action="store_true",
                   help="print the LLVM IR before and after optimization")
    p.add_argument("--asm", action="store_true", help="print the machine code (assembly)")
    p.add_argument("--target", choices=("cpu", "cuda"), default="cpu",
                   help="code generation target (cpu); cuda makes PTX, no GPU needed")
    p.add_argument("--arch", default=None, metavar="SM", help="CUDA architecture (sm_80)")
    p.add_argument("--ptx", action="store_true", help="print the PTX (with --target cuda)")
    p.add_argument("--opt-level", type=int, default=2, metavar="N", help="optimization level (2)")
    p.add_argument("--disable", action="append", default=[], metavar="PASS",
                   help="switch an optimizing pass off (repeatable)")
    p.set_defaults(run=dump_graph)
    e = sub.add_parser(
        "export", help="write a model as a C shared library (libNAME.so) and header (NAME.h)",
        description=(
            "Compile module-level expressions of MODEL (run like `python MODEL`, so only "
            "export files you trust) and write libNAME.so and NAME.h into DIR. Every input "
            "needs a declared shape and dtype. See docs/deployment.md for the C interface."),
        epilog="example:\n  symgraph export model.py -o build --name model --output y",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("model", metavar="MODEL", help="Python file building expressions")
    e.add_argument("-o", "--out-dir", required=True, metavar="DIR", help="output directory")
    e.add_argument("--name", help="library and C symbol prefix (default: MODEL's file name)")
    e.add_argument("--output", action="append", default=[], metavar="X",
                   help="module-level expression to export (repeatable; default: the sinks)")
    e.add_argument("--cpu", default=None,
                   help="target CPU: the baseline (default, x86-64-v3 on x86), 'native', or "
                        "an LLVM CPU name")
    e.add_argument("--opt-level", type=int, default=2, metavar="N", help="optimization level (2)")
    e.add_argument("--disable", action="append", default=[], metavar="PASS",
                   help="switch an optimizing pass off (repeatable)")
    e.add_argument("--threads", type=int, default=1, metavar="N",
                   help="threads for large loops, the caller's and the library's own (1)")
    e.set_defaults(run=export_model)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "dump-graph" and (args.model is None) == (args.graph is None):
        parser.error("dump-graph needs a MODEL file or --graph FILE (exactly one)")
    try:
        args.run(args, sys.stdout)
    except SymgraphError as exc:
        if DEBUG:
            traceback.print_exc()
        print(f"symgraph: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `symgraph ... | head`
        sys.stderr.close()
        return 0
    return 0


# --- loading what to inspect -----------------------------------------------------------------

class Subject:
    """What dump-graph looks at: output expressions with names, their Variables and options."""

    def __init__(self, outputs, names, variables, passes, compile_fn):
        self.outputs, self.names, self.variables = outputs, names, variables
        self.passes, self.compile_fn = passes, compile_fn


def run_model(path):
    """Execute `path` like ``python path``; returns its module namespace."""
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not a Python file")
    path = os.path.abspath(path)
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(path))
    try:
        return runpy.run_path(path, run_name="__main__")
    except SymgraphError as exc:
        raise exc.with_traceback(None) from None
    except SystemExit as exc:
        raise CLIError(f"{os.path.basename(path)} called sys.exit({exc.code!r}) before its "
                       "expressions could be collected") from None
    except BaseException as exc:  # the model's own bug: show it at the model's line
        if isinstance(exc, KeyboardInterrupt):
            raise
        if DEBUG:
            traceback.print_exc()
        frames = [f for f in traceback.extract_tb(exc.__traceback__)
                  if os.path.abspath(f.filename) == path]
        where = ""
        if frames:
            f = frames[-1]
            where = f"\n  at {os.path.basename(path)}:{f.lineno}: {(f.line or '').strip()}"
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise CLIError(f"{os.path.basename(path)} raised {detail}{where}") from None
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path


def module_expressions(namespace) -> dict:
    """Public module-level names bound to expressions, one name per expression."""
    from .frontend import Expr

    found, seen = {}, set()
    for name, value in namespace.items():
        if name.startswith("_") or not isinstance(value, Expr) or id(value) in seen:
            continue
        seen.add(id(value))
        found[name] = value
    return found


def sinks(exprs: dict) -> list:
    """Names of expressions no other one uses (sources excluded), in creation order."""
    from .frontend import collect

    used = set()
    for e in exprs.values():
        used |= {id(a) for a in collect([e]) if a is not e}
    names = [n for n, e in exprs.items() if id(e) not in used and e.op not in SOURCES]
    return sorted(names, key=lambda n: exprs[n].id)


def load_model(args) -> Subject:
    from .frontend import find_variables
    from .passes import pipeline
    from .runtime.compiled import compile as compile_

    namespace = run_model(args.model)
    exprs = module_expressions(namespace)
    model = os.path.basename(args.model)
    if not exprs:
        raise CLIError(f"{model} defines no symgraph expressions at module level",
                       hint="assign them to module-level names, e.g. y = A * 2 + 1")
    if args.output:
        unknown = [n for n in args.output if n not in exprs]
        if unknown:
            raise CLIError(f"{model} has no module-level expression named "
                           f"{', '.join(map(repr, unknown))}",
                           hint=f"expressions: {', '.join(sorted(exprs))}")
        names = list(dict.fromkeys(args.output))
    else:
        names = sinks(exprs)
        if not names:
            raise CLIError(f"{model} defines only inputs and constants, no computation")
    outputs = [exprs[n] for n in names]
    variables = find_variables(outputs)
    passes = pipeline(args.opt_level, tuple(args.disable))

    def compile_fn():
        return compile_(list(outputs), inputs=variables, opt_level=args.opt_level,
                        disable=tuple(args.disable))

    return Subject(outputs, names, variables, passes, compile_fn)


def load_saved(args) -> Subject:
    import symgraph

    load = getattr(symgraph, "load", None)
    if load is None:
        raise CLIError("--graph is not available yet: this symgraph cannot load saved graphs",
                       hint="pass the model's Python file instead")
    if not os.path.exists(args.graph):
        raise CLIError(f"no such file: {args.graph}")
    f = load(args.graph)
    outputs = list(f.structure.exprs)
    keys = f.structure.keys or [f"output{i}" for i in range(len(outputs))]
    names = [str(k) for k in keys]
    if args.output:
        unknown = [n for n in args.output if n not in names]
        if unknown:
            raise CLIError(f"{args.graph} has no output named {', '.join(map(repr, unknown))}",
                           hint=f"outputs: {', '.join(names)}")
        picked = [names.index(n) for n in dict.fromkeys(args.output)]
        outputs, names = [outputs[i] for i in picked], [names[i] for i in picked]
    return Subject(outputs, names, list(f.variables), list(f.passes), lambda: f)


# --- signatures ------------------------------------------------------------------------------

def signature(subject, declared):
    """{name: (shape, dtype)} for every input, or (None, [names left open])."""
    by_name = {}
    for name, shape, dtype in declared:
        if name in by_name:
            raise CLIError(f"--input {name} is given twice")
        by_name[name] = (shape, dtype)
    known = {v.attrs["name"] for v in subject.variables}
    unknown = [n for n in by_name if n not in known]
    if unknown:
        raise CLIError(f"--input names {', '.join(map(repr, unknown))}, which the shown outputs "
                       "do not use", hint=f"inputs: {', '.join(sorted(known)) or '(none)'}")
    types, missing = {}, []
    for v in subject.variables:
        name = v.attrs["name"]
        shape, dtype = by_name.get(name, (None, None))
        if shape is None:
            shape = v.attrs.get("shape")
        if dtype is None:
            dtype = v.attrs.get("dtype")
        if shape is None or dtype is None:  # open axes (None or named) are fine: symbolic
            missing.append(name)
        else:
            types[name] = (tuple(shape), np.dtype(dtype))
    return (None, missing) if missing else (types, [])


# --- the command -----------------------------------------------------------------------------

def dump_graph(args, out):
    from . import inspect as insp
    from .frontend import to_graph
    from .graph import to_text
    from .runtime.compiled import _contiguous_key
    from .shapes import NotGeneric

    subject = load_saved(args) if args.graph else load_model(args)
    header = "# outputs: " + ", ".join(subject.names)
    types, missing = signature(subject, args.input)
    if types is None:
        g = to_graph(subject.outputs, subject.variables)
        needs = ", ".join(missing)
        note = (f"shapes/dtypes are needed to run the passes: declare them in the model or pass "
                f"--input for {needs} (e.g. --input {missing[0]}=float64[1000])")
        wanted = [flag for flag, on in (("--after", args.after), ("--passes", args.passes),
                                         ("--llvm", args.llvm), ("--llvm-opt", args.llvm_opt),
                                         ("--asm", args.asm)) if on]
        if wanted:
            raise CLIError(f"{' '.join(wanted)} needs types for input(s) {needs}: {note}")
        render_single(args, g, "unspecialized", out, header, note)
        return
    if args.ptx or args.target == "cuda":
        from .runtime.compiled import compile as compile_

        if not args.ptx:
            raise CLIError("--target cuda shows the PTX: add --ptx")
        if args.graph:
            raise CLIError("--ptx needs a MODEL file")
        f = compile_(list(subject.outputs), inputs=subject.variables, opt_level=args.opt_level,
                     disable=tuple(args.disable), target="cuda", arch=args.arch)
        ins = [types[n] for n in f.inputs]
        out.write(f._specialize(ins, _contiguous_key(ins)).program.ptx.rstrip() + "\n")
        return
    open_sizes = not all(isinstance(d, int) for shape, _ in types.values() for d in shape)
    if open_sizes and (args.ptx or args.target == "cuda"):
        raise CLIError("--ptx needs every size: the CUDA target compiles per shape",
                       hint="pass --input NAME=DTYPE[SIZES] for the inputs with open sizes")
    try:
        t = insp.trace(to_graph(subject.outputs, subject.variables), types, subject.passes)
    except NotGeneric as exc:
        raise CLIError(f"this graph needs concrete sizes for its open axes: {exc}",
                       hint="pass --input NAME=DTYPE[SIZES] for the inputs with open sizes")
    if args.passes:
        out.write(passes_text(t) + "\n")
        return
    stage = args.after or "final"
    if stage not in t.stages:
        raise CLIError(f"no stage named {stage!r}", hint=f"stages: {', '.join(t.stages)}")
    if args.format != "text" or args.svg or args.png:
        render_single(args, t.stages[stage], stage, out, header, None)
    elif args.after:
        out.write(header + "\n" + stage_text(t, stage, to_text) + "\n")
        write_extras(args, t, stage, out)
    else:
        out.write(header + "\n")
        names = list(t.stages)
        for stage in names:
            if stage == "final" and len(names) > 1 and t.stages["final"] is t.stages[names[-2]]:
                continue  # the last pass's graph is the final one: shown once
            out.write(stage_text(t, stage, to_text) + "\n")
        write_extras(args, t, "final", out)
    if args.llvm or args.llvm_opt or args.asm:
        f = subject.compile_fn()
        if open_sizes:
            library = f._generic_code(tuple(types[n][1] for n in f.inputs)).exe.library
        else:
            key = _contiguous_key([types[n] for n in f.inputs])
            library = f._specialize([types[n] for n in f.inputs], key).library
        if args.llvm or args.llvm_opt:
            out.write("== LLVM IR ==\n" + library.llvm_ir.rstrip() + "\n")
        if args.llvm_opt:
            out.write("== LLVM IR (optimized) ==\n" + insp.optimized_ir(library).rstrip() + "\n")
        if args.asm:
            out.write("== assembly ==\n" + library.asm.rstrip() + "\n")


def _details(record) -> str:
    parts = []
    for k, v in record.details.items():
        if isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in sorted(v.items())) or "none"
            parts.append(f"{k}: {v}")
        else:
            parts.append(f"{k}={v}")
    return " ".join(parts)


def passes_text(t) -> str:
    """One line per stage: node counts and the pass's own details."""
    rows = []
    for stage, g in t.stages.items():
        r = t.record(stage)
        if r is None:
            rows.append((stage, f"{g.number_of_nodes()} nodes", ""))
        else:
            rows.append((stage, f"{r.nodes_before} -> {r.nodes_after} nodes", _details(r)))
    width = max(len(r[0]) for r in rows)
    count = max(len(r[1]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {b.ljust(count)}  {c}".rstrip() for a, b, c in rows)


def stage_text(t, stage, to_text) -> str:
    """A stage's header (what the pass did and which nodes changed) and its graph text."""
    g = t.stages[stage]
    r = t.record(stage)
    if r is None:
        head = f"== {stage}: {g.number_of_nodes()} nodes =="
        lines = [head]
    else:
        detail = _details(r)
        lines = [f"== after {stage}: {r.nodes_before} -> {r.nodes_after} nodes"
                 f"{' (' + detail + ')' if detail else ''} =="]
        names = list(t.stages)
        before = t.stages[names[names.index(stage) - 1]]
        changes = insp_changes(before, g)
        if changes:
            lines.append(changes)
    lines.append(to_text(g))
    return "\n".join(lines)


def insp_changes(before, after) -> str:
    from .inspect import stage_changes

    c = stage_changes(before, after)
    parts = [f"{k}: " + " ".join(f"%{n}" for n in c[k]) for k in ("removed", "added", "changed")
             if c[k]]
    return "  " + "; ".join(parts) if parts else ""


def write_extras(args, t, stage, out):
    from .inspect import memory_summary, shape_table

    g = t.stages[stage]
    if args.shapes:
        out.write(f"== shapes ({stage}) ==\n" + shape_table(g) + "\n")
    if "memory_plan" in g.graph:
        out.write(memory_summary(g.graph["memory_plan"]) + "\n")


def render_single(args, g, stage, out, header, note):
    """One graph as text, DOT or JSON on stdout, or rendered to --svg / --png."""
    from . import inspect as insp
    from .graph import to_text

    if args.svg or args.png:
        dot_text = insp.graph_to_dot(g, title=stage)
        for fmt, path in (("svg", args.svg), ("png", args.png)):
            if path:
                render(dot_text, fmt, path)
                out.write(f"wrote {path}\n")
        return
    if args.format == "json":
        out.write(insp.graph_to_json(g, stage=stage))
    elif args.format == "dot":
        out.write(insp.graph_to_dot(g, title=stage))
    else:
        out.write(f"{header}\n== {stage} ==\n{to_text(g)}\n")
        if args.shapes:
            out.write(f"== shapes ({stage}) ==\n" + insp.shape_table(g) + "\n")
        if note:
            out.write(f"# {note}\n")


def render(dot_text, fmt, path):
    """Run graphviz's dot to write `path` in `fmt`."""
    exe = shutil.which("dot")
    if exe is None:
        raise CLIError(
            f"--{fmt} needs graphviz's `dot` program, which is not on PATH",
            hint="install graphviz (apt-get install graphviz, brew install graphviz or conda "
                 "install graphviz), or use --format dot and render it elsewhere")
    try:
        done = subprocess.run([exe, f"-T{fmt}", "-o", path], input=dot_text.encode(),
                              capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CLIError(f"running dot failed: {exc}") from None
    if done.returncode != 0:
        raise CLIError(f"dot failed (exit {done.returncode}): "
                       f"{done.stderr.decode(errors='replace').strip()[:500]}")


def export_model(args, out):
    """``symgraph export``: outputs are named after their module-level names in the header."""
    from .runtime.compiled import compile as compile_

    subject = load_model(args)
    name = args.name
    if name is None:
        stem = os.path.splitext(os.path.basename(args.model))[0]
        name = re.sub(r"\W", "_", stem) if stem and not stem[0].isdigit() else f"model_{stem}"
    f = compile_(dict(zip(subject.names, subject.outputs)), inputs=subject.variables,
                 opt_level=args.opt_level, disable=tuple(args.disable))
    library, header = f.export(args.out_dir, name=name, cpu=args.cpu, num_threads=args.threads)
    out.write(f"wrote {library}\nwrote {header}\n")
