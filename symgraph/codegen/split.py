"""Split a large module into parts that LLVM can optimize and compile in separate processes.

LLVM's time on a graph of thousands of ops is almost all spent on the kernels, which do not
call one another: the entry calls each kernel, and a kernel calls only its own helpers (its
thread range, its exact-trig copy, its GEMM tile functions) and shared math functions. So the
kernels can be dealt out to parts, each part compiled to an object file on its own core, and
the object files loaded into one engine, which links the entry's calls to the kernels.

A part holds its kernels with everything they reach; helpers reached from several parts
(math functions) are copied into each, as internal functions, so no symbol is defined twice.
A kernel that leaves the entry's part is made external there and declared in the entry's
part. Splitting works on the module's text as llvmlite prints it: each top-level entity
starts at the beginning of a line, and a function body ends at a line holding only ``}``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_REFERENCE = re.compile(r'@"((?:[^"\\]|\\.)*)"|@([-\w.$]+)')
_DEFINE = re.compile(r'define\s+(?:(internal|private)\s+)?')
# A scalar math function names its SIMD variants in this attribute (LLVM's vector-function
# ABI), so the vectorizer may call them: they go wherever the function goes.
_VARIANTS = re.compile(r'"vector-function-abi-variant"="([^"]*)"')
_USED = "llvm.compiler.used"


@dataclass
class _Entity:
    kind: str  # "define", "declare", "global", "metadata", "other"
    name: str | None
    text: str
    internal: bool = False
    refs: set = field(default_factory=set)


def _name_at(line: str) -> str | None:
    match = _REFERENCE.search(line)
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)


def _entities(text: str):
    """(header lines, top-level entities in order) of a module printed by llvmlite."""
    lines = text.split("\n")
    header, entities = [], []
    i = 0
    while i < len(lines) and not lines[i].startswith(("define ", "declare ", "@", "!")):
        header.append(lines[i])
        i += 1
    while i < len(lines):
        line = lines[i]
        if line.startswith("define "):
            start = i
            while lines[i] != "}":
                i += 1
            body = "\n".join(lines[start:i + 1])
            head = _DEFINE.match(line)
            entity = _Entity("define", _name_at(line[head.end():]), body,
                             internal=head.group(1) is not None)
            entity.refs = {a or b for a, b in _REFERENCE.findall(body)} - {entity.name}
            for variants in _VARIANTS.findall(line):
                entity.refs |= set(re.findall(r"\(([-\w.$]+)\)", variants))
            entities.append(entity)
        elif line.startswith("declare "):
            entities.append(_Entity("declare", _name_at(line), line))
        elif line.startswith("@"):
            entity = _Entity("global", _name_at(line), line)
            entity.refs = {a or b for a, b in _REFERENCE.findall(line)} - {entity.name}
            entities.append(entity)
        elif line.strip():
            entities.append(_Entity("metadata" if line.startswith("!") else "other", None, line))
        i += 1
    return header, entities


def _reach(start, defined):
    """Names of the defined functions reachable from `start` (included) through references."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in defined:
            continue
        seen.add(name)
        todo.extend(defined[name].refs)
    return seen


def split_module(text: str, parts: int) -> list[str]:
    """The module `text` as `parts` modules (fewer when it has too few kernels): the first
    holds the externally visible entry points; kernels are balanced by their text size."""
    header, entities = _entities(text)
    defined = {e.name: e for e in entities if e.kind == "define"}
    entries = [e.name for e in entities if e.kind == "define" and not e.internal]
    kernels = []
    for name in entries:
        for ref in sorted(defined[name].refs):
            if ref in defined and defined[ref].internal and ref not in kernels:
                kernels.append(ref)
    closures = {k: _reach([k], defined) for k in kernels}
    parts = max(1, min(parts, len(kernels)))
    if parts == 1:
        return [text]
    # What the entries reach without going through a kernel stays with them, in part 0.
    entry_closure = _reach(entries, {n: e for n, e in defined.items() if n not in closures})
    loads = [sum(len(defined[n].text) for n in entry_closure)] + [0] * (parts - 1)
    owner = {}
    for k in sorted(kernels, key=lambda k: -sum(len(defined[n].text) for n in closures[k])):
        p = min(range(parts), key=loads.__getitem__)
        owner[k] = p
        loads[p] += sum(len(defined[n].text) for n in closures[k])
    if len(set(owner.values())) < parts:
        return [text]
    out = []
    for p in range(parts):
        members = set().union(*(closures[k] for k in kernels if owner[k] == p))
        if p == 0:
            members |= entry_closure
        body = []
        for e in entities:
            if e.kind == "global" and e.name == _USED:
                body.append(_used_line(e, members))
            elif e.kind != "define":
                body.append(e.text)
            elif e.name in members:
                if e.name in owner and owner[e.name] != 0:
                    body.append(_DEFINE.sub("define ", e.text, count=1))  # called from part 0
                else:
                    body.append(e.text)
            elif p == 0 and e.name in owner:
                body.append(_declaration(e.text))
        out.append("\n".join(header + body))
    return out


def _used_line(entity, members) -> str:
    """llvm.compiler.used (functions LLVM must keep until the vectorizer may call them)
    listing only the part's own functions."""
    kept = sorted(n for n in entity.refs if n in members)
    if not kept:
        return ""
    items = ", ".join(f'ptr @"{n}"' for n in kept)
    return (f'@"{_USED}" = appending global [{len(kept)} x ptr] [{items}], '
            f'section "llvm.metadata"')


def _declaration(define_text: str) -> str:
    """`declare` for a function printed as `define ...`: its signature without argument
    names, attributes or body."""
    line = define_text.split("\n", 1)[0]
    head = _DEFINE.match(line)
    rest = line[head.end():]
    depth, end = 0, None
    start = rest.index("(")
    for i in range(start, len(rest)):
        if rest[i] == "(":
            depth += 1
        elif rest[i] == ")":
            depth -= 1
            if depth == 0:
                end = i
                break
    params = rest[start + 1:end]
    types = []
    for param in _split_params(params):
        param = re.sub(r'\s+%(?:"(?:[^"\\]|\\.)*"|[-\w.$]+)\s*$', "", param.strip())
        types.append(param)
    return f"declare {rest[:start]}({', '.join(types)})"


def _split_params(params: str):
    depth, current, out = 0, [], []
    for ch in params:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        out.append("".join(current))
    return out
