"""fuse: group ops into kernels, so fused elementwise work makes one pass over memory.

A node is inlined into its users' kernel (computed in registers, never stored) when it is
elementwise or a movement op, is not an output, all its users sit in one kernel that can
inline it, and it has as many elements as that kernel's loop domain (inlining a smaller
node under broadcasting would recompute it per element). Everything else roots a kernel.
Each node gets a `kernel` attribute; kernels are numbered in a valid execution order.

Epilogues: a matmul or conv2d whose only user is an elementwise kernel over exactly its
output (the bias add and activation after a layer) joins that kernel. Code generation then
computes the product into the kernel's result buffer and applies the elementwise ops to
each output tile while it is still in registers or L1, so the layer makes no extra pass
over memory.
"""
from __future__ import annotations

import math

from ..graph import copy_graph, topo_order
from ..ops import get_op

INLINABLE = ("elementwise", "movement", "gather")
# A kernel's loop body is capped (transcendental functions weigh more: they inline a
# polynomial), so LLVM's optimization time stays linear in graph size. Splitting costs one
# store and one load per element at the cut; past this size that is cheap next to the work.
MAX_KERNEL_WEIGHT = 256
_HEAVY = frozenset({"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan",
                    "sinh", "cosh", "tanh", "sigmoid", "pow"})


def op_weight(opname) -> int:
    return 16 if opname in _HEAVY else 1
CAN_ABSORB = ("elementwise", "movement", "gather", "reduce", "argreduce")
PRODUCTS = ("matmul", "conv")  # ops that can take an elementwise epilogue


def epilogue_ok(g, n, root, members) -> bool:
    """Whether product node `n` can join the elementwise kernel rooted at `root` (members
    so far): the kernel loops over exactly n's output, in n's dtype, and holds nothing but
    elementwise ops (so no other product)."""
    d, r = g.nodes[n], g.nodes[root]
    if d["op"] == "matmul" and len(d["shape"]) != 2:
        return False  # batched products keep their own kernel
    if d["op"] == "conv2d" and d["attrs"].get("groups", 1) != 1:
        return False
    return (tuple(r["shape"]) == tuple(d["shape"]) and r["dtype"] == d["dtype"]
            and d["dtype"].kind == "f"
            and all(get_op(g.nodes[m]["op"]).kind == "elementwise" for m in members))


def kernel_domain(g, root) -> tuple:
    """The loop domain of the kernel rooted at `root`: a reduction loops over its input."""
    d = g.nodes[root]
    if get_op(d["op"]).kind == "control":
        return ()
    if get_op(d["op"]).kind in ("reduce", "argreduce"):
        return g.nodes[d["args"][0]]["shape"]
    return d["shape"]


def assign_kernels(g, *, inline: bool):
    g = copy_graph(g)
    epilogues_allowed = g.graph.get("epilogues", True)  # a target may lower products alone
    order = topo_order(g)
    outputs = set(g.graph["outputs"])
    kernel_of, domain_size, weight, inlined = {}, {}, {}, 0
    members, epilogues = {}, 0
    for n in reversed(order):
        d = g.nodes[n]
        kind = get_op(d["op"]).kind
        if kind in ("source", "item"):  # items name a control node's result buffers
            d["kernel"] = None
            continue
        users = list(g.successors(n))
        user_kernels = {kernel_of.get(u) for u in users}
        if (inline and n not in outputs and kind in INLINABLE and len(user_kernels) == 1
                and all(get_op(g.nodes[u]["op"]).kind in CAN_ABSORB for u in users)
                and math.prod(d["shape"]) == domain_size[next(iter(user_kernels))]
                and weight[next(iter(user_kernels))] + op_weight(d["op"]) <= MAX_KERNEL_WEIGHT):
            k = next(iter(user_kernels))
            kernel_of[n] = k
            weight[k] += op_weight(d["op"])
            members[k].append(n)
            inlined += 1
        elif (inline and epilogues_allowed and n not in outputs and kind in PRODUCTS
              and len(users) == 1 and None not in user_kernels
              and epilogue_ok(g, n, kernel_of[users[0]], members[kernel_of[users[0]]])):
            k = kernel_of[users[0]]
            kernel_of[n] = k
            members[k].append(n)
            epilogues += 1
        else:
            kernel_of[n] = n  # provisional id: the root's key
            domain_size[n] = math.prod(kernel_domain(g, n))
            weight[n] = op_weight(d["op"])
            members[n] = [n]
    # Number kernels by their root's position in topological order: a valid schedule.
    position = {n: i for i, n in enumerate(order)}
    roots = sorted(set(kernel_of.values()), key=position.__getitem__)
    with_product = {k for k, ms in members.items()  # ms[0] is the kernel's root
                    if any(get_op(g.nodes[m]["op"]).kind in PRODUCTS for m in ms[1:])}
    group = (_merge_siblings(g, roots, weight, with_product) if inline
             else list(range(len(roots))))
    number = {root: group[i] for i, root in enumerate(roots)}
    for n, k in kernel_of.items():
        g.nodes[n]["kernel"] = number[k]
    count = (group[-1] + 1) if group else 0
    g.graph["num_kernels"] = count
    return g, {"kernels": count, "ops_fused": inlined, "kernels_merged": len(roots) - count,
               "epilogues": epilogues}


def _merge_siblings(g, roots, weight, keep_apart=()) -> list:
    """Kernel number per root: consecutive elementwise kernels over the same domain become one
    loop that stores several results, so a DAG whose nodes have several users still makes
    one pass. Only consecutive kernels merge, so every dependency still runs forward; a
    value one member reads from another is computed in the same iteration."""
    numbers, current, shape, total = [], -1, None, 0
    for root in roots:
        d = g.nodes[root]
        mergeable = get_op(d["op"]).kind in INLINABLE and root not in keep_apart
        if (mergeable and shape is not None and d["shape"] == shape
                and total + weight[root] <= MAX_KERNEL_WEIGHT):
            total += weight[root]
        else:
            current += 1
            shape, total = (d["shape"] if mergeable else None), weight[root]
        numbers.append(current)
    return numbers


def fuse(g):
    """Group elementwise and movement ops into their consumers' kernels."""
    return assign_kernels(g, inline=True)


def schedule(g):
    """Give every op its own kernel (the unfused baseline code generation needs)."""
    return assign_kernels(g, inline=False)
