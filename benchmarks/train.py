"""One SGD step of the examples/train_mlp.py network (64-128-128-10, batch 32, float32):
symgraph's compiled step (forward, loss, backward, update in one call) against numpy with
hand-written backprop, and torch eager when installed."""
from __future__ import annotations

import numpy as np

from harness import fmt_ratio, fmt_time, measure, optional, table

import symgraph as sg

BATCH, N_IN, HIDDEN, N_OUT, LR = 32, 64, 128, 10, 0.1


def _params(rng):
    shapes = [(N_IN, HIDDEN), (HIDDEN,), (HIDDEN, HIDDEN), (HIDDEN,), (HIDDEN, N_OUT), (N_OUT,)]
    return [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in shapes]


def _symgraph_step():
    shapes = [(N_IN, HIDDEN), (HIDDEN,), (HIDDEN, HIDDEN), (HIDDEN,), (HIDDEN, N_OUT), (N_OUT,)]
    p = [sg.Variable(f"p{i}", s, "float32") for i, s in enumerate(shapes)]
    x, y = sg.Variable("x", (BATCH, N_IN), "float32"), sg.Variable("y", (BATCH,), "int64")
    h1 = sg.relu(x @ p[0] + p[1])
    h2 = sg.relu(h1 @ p[2] + p[3])
    loss = sg.cross_entropy(h2 @ p[4] + p[5], y)
    grads = sg.grad(loss, p)
    return sg.compile([*(w - LR * g for w, g in zip(p, grads)), loss], inputs=[*p, x, y],
                      num_threads=1)


def _numpy_step(params, x, y):
    w1, b1, w2, b2, w3, b3 = params
    z1 = x @ w1 + b1
    h1 = np.maximum(z1, 0)
    z2 = h1 @ w2 + b2
    h2 = np.maximum(z2, 0)
    logits = h2 @ w3 + b3
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_p[np.arange(len(y)), y].mean()
    d_logits = np.exp(log_p)
    d_logits[np.arange(len(y)), y] -= 1
    d_logits /= len(y)
    d_w3, d_b3 = h2.T @ d_logits, d_logits.sum(0)
    d_h2 = (d_logits @ w3.T) * (z2 > 0)
    d_w2, d_b2 = h1.T @ d_h2, d_h2.sum(0)
    d_h1 = (d_h2 @ w2.T) * (z1 > 0)
    d_w1, d_b1 = x.T @ d_h1, d_h1.sum(0)
    grads = [d_w1, d_b1, d_w2, d_b2, d_w3, d_b3]
    return [w - LR * g for w, g in zip(params, grads)] + [loss]


def run(quick=False):
    rng = np.random.default_rng(0)
    params = _params(rng)
    x = rng.standard_normal((BATCH, N_IN)).astype(np.float32)
    y = rng.integers(0, N_OUT, BATCH)
    step = _symgraph_step()
    got, want = step(*params, x, y), _numpy_step(params, x, y)
    error = max(float(np.max(np.abs(a - b))) for a, b in zip(got, want))
    times = {"symgraph": measure(lambda: step(*params, x, y), repeat=5 if quick else 9).median,
             "numpy (hand-written backprop)": measure(lambda: _numpy_step(params, x, y),
                                                      repeat=5 if quick else 9).median}
    torch = optional("torch")
    if torch:
        torch.set_num_threads(1)
        tp = [torch.tensor(p, requires_grad=True) for p in params]
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_step():
            h = torch.relu(tx @ tp[0] + tp[1])
            h = torch.relu(h @ tp[2] + tp[3])
            loss = torch.nn.functional.cross_entropy(h @ tp[4] + tp[5], ty)
            grads = torch.autograd.grad(loss, tp)
            with torch.no_grad():
                return [w - LR * g for w, g in zip(tp, grads)]

        times["torch eager"] = measure(torch_step, repeat=5 if quick else 9).median
    return {"times": times, "max_abs_diff_vs_numpy": error}


def report(result) -> str:
    t = result["times"]
    base = t["symgraph"]
    rows = [[name, fmt_time(s), fmt_ratio(s / base)] for name, s in t.items()]
    return "\n".join([
        f"one SGD step, MLP {N_IN}-{HIDDEN}-{HIDDEN}-{N_OUT}, batch {BATCH}, float32, one thread",
        table(["engine", "median", "time / symgraph's"], rows),
        f"max |symgraph - numpy| over the updated parameters and loss: "
        f"{result['max_abs_diff_vs_numpy']:.1e}"])
