"""simplify: algebraic rewrites that are exact, as small rules plus a bottom-up rebuild.

A rule looks at one node (its operands already rewritten) and returns the node that
replaces it: an existing node, or a new one it builds. A replacement must have the node's
dtype and shape exactly and give bit-identical results for every input, so `x*0` stays for
floats (NaN, inf, -0.0) and so does `x + 0.0` (-0.0 + 0.0 is 0.0), while `x + (-0.0)` goes.
`x ** 0.5` is left alone: pow and sqrt disagree on -0.0 and -inf, and numpy's own answer
depends on whether the exponent is broadcast, so no single rewrite matches it everywhere.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from ..graph import add_node, copy_graph, replace_uses, topo_order
from ..infer import node_typing


def _const_value(g, n, typing, i):
    """Operand `i` as the op sees it (converted to its input dtype), if it is a constant."""
    a = g.nodes[n]["args"][i]
    data = g.nodes[a]
    if data["op"] != "const":
        return None
    value = data["attrs"]["value"]
    want = typing.in_dtypes[i] if i < len(typing.in_dtypes) else None
    if want is not None and value.dtype != want:
        with np.errstate(all="ignore"):
            value = value.astype(want)
    return value


def _all(value, number, *, negative_zero=None):
    """Whether every element equals `number` (and, for zeros, has the wanted sign)."""
    if value is None or value.size == 0 or not np.all(value == number):
        return False
    if negative_zero is not None and value.dtype.kind == "f":
        return bool(np.all(np.signbit(value) == negative_zero))
    return True


def _identity_operand(g, n, typing, const_i, number, **sign):
    """The other operand when operand `const_i` is the constant `number` everywhere."""
    other = 1 - const_i
    if _all(_const_value(g, n, typing, const_i), number, **sign):
        return g.nodes[n]["args"][other]
    return None


def _first(*candidates):
    return next((c for c in candidates if c is not None), None)


def rule_mul_one(g, n, typing):
    return _first(_identity_operand(g, n, typing, 1, 1), _identity_operand(g, n, typing, 0, 1))


def rule_add_zero(g, n, typing):
    # x + (-0.0) is x for every float x; x + 0.0 is not (for x = -0.0).
    sign = {"negative_zero": True} if typing.dtype.kind == "f" else {}
    return _first(_identity_operand(g, n, typing, 1, 0, **sign),
                  _identity_operand(g, n, typing, 0, 0, **sign))


def rule_sub_zero(g, n, typing):
    # x - 0.0 is x + (-0.0): exact; x - (-0.0) is x + 0.0: not.
    sign = {"negative_zero": False} if typing.dtype.kind == "f" else {}
    return _identity_operand(g, n, typing, 1, 0, **sign)


def rule_div_one(g, n, typing):
    return _identity_operand(g, n, typing, 1, 1)


def rule_neg_neg(g, n, typing):
    (a,) = g.nodes[n]["args"]
    return g.nodes[a]["args"][0] if g.nodes[a]["op"] == "neg" else None


def rule_pow(g, n, typing):
    x = g.nodes[n]["args"][0]
    exponent = _const_value(g, n, typing, 1)
    if _all(exponent, 1):
        return x
    d = g.nodes[n]
    if _all(exponent, 2) and _same_type(g, x, n):
        return add_node(g, "mul", (x, x), {}, d["shape"], d["dtype"], d["loc"])
    return None


def rule_cast_same(g, n, typing):
    (a,) = g.nodes[n]["args"]
    return a if g.nodes[a]["dtype"] == g.nodes[n]["dtype"] else None


def rule_transpose(g, n, typing):
    d = g.nodes[n]
    (a,) = d["args"]
    perm = tuple(d["attrs"]["perm"])
    inner = g.nodes[a]
    if inner["op"] == "transpose":
        perm = tuple(inner["attrs"]["perm"][p] for p in perm)
        a = inner["args"][0]
    if perm == tuple(range(len(perm))):
        return a
    if a == d["args"][0]:
        return None
    return add_node(g, "transpose", (a,), {"perm": perm}, d["shape"], d["dtype"], d["loc"])


def rule_reshape(g, n, typing):
    d = g.nodes[n]
    (a,) = d["args"]
    if g.nodes[a]["op"] == "reshape":
        a = g.nodes[a]["args"][0]
    if tuple(g.nodes[a]["shape"]) == tuple(d["shape"]):
        return a
    if a == d["args"][0]:
        return None
    return add_node(g, "reshape", (a,), {"shape": tuple(d["shape"])}, d["shape"], d["dtype"],
                    d["loc"])


RULES = {
    "mul": [("mul_one", rule_mul_one)],
    "add": [("add_zero", rule_add_zero)],
    "sub": [("sub_zero", rule_sub_zero)],
    "div": [("div_one", rule_div_one)],
    "neg": [("neg_neg", rule_neg_neg)],
    "pow": [("pow_small", rule_pow)],
    "cast": [("cast_same", rule_cast_same)],
    "transpose": [("transpose_transpose", rule_transpose)],
    "reshape": [("reshape_reshape", rule_reshape)],
}


def _same_type(g, a, b) -> bool:
    da, db = g.nodes[a], g.nodes[b]
    return da["dtype"] == db["dtype"] and tuple(da["shape"]) == tuple(db["shape"])


def simplify(g):
    """Apply the exact rewrite rules bottom-up; dead originals are left for dce."""
    g = copy_graph(g)
    rewrites = Counter()
    for n in topo_order(g):
        rules = RULES.get(g.nodes[n]["op"])
        if not rules:
            continue
        typing = node_typing(g, n)
        for name, rule in rules:
            before = g.graph["next_id"]
            new = rule(g, n, typing)
            if new is None or new == n:
                continue
            if not _same_type(g, n, new):
                # A rewrite may never change the dtype or shape; drop what it built.
                g.remove_nodes_from(range(before, g.graph["next_id"]))
                continue
            if g.nodes[n].get("name") and not g.nodes[new].get("name") and new >= before:
                g.nodes[new]["name"] = g.nodes[n]["name"]
            replace_uses(g, n, new)
            rewrites[name] += 1
            break
    return g, {"rewrites": dict(rewrites)}
