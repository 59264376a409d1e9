"""Train a small MLP on scikit-learn's handwritten digits, the whole SGD step compiled once.

Forward pass, cross-entropy loss, backward pass (symgraph.grad) and the parameter update
are one graph: one native call per minibatch. Needs the `examples` extra
(`pip install -e ".[examples]"`: scikit-learn for the data, tqdm for the progress bar).
"""
import time

import numpy as np

import symgraph as sg

try:
    from tqdm import tqdm
except ImportError:  # the progress bar is optional
    def tqdm(iterable, **kwargs):
        return iterable

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

BATCH, HIDDEN, EPOCHS, LR = 32, 128, 40, 0.1
DTYPE = "float32"


def build_step(n_features, n_classes):
    """One compiled function: (params, x, y) -> (new params..., loss)."""
    shapes = {"w1": (n_features, HIDDEN), "b1": (HIDDEN,), "w2": (HIDDEN, HIDDEN), "b2": (HIDDEN,),
              "w3": (HIDDEN, n_classes), "b3": (n_classes,)}
    params = {name: sg.Variable(name, shape, DTYPE) for name, shape in shapes.items()}
    x = sg.Variable("x", (BATCH, n_features), DTYPE)
    y = sg.Variable("y", (BATCH,), "int64")
    p = params
    h1 = sg.relu(x @ p["w1"] + p["b1"])
    h2 = sg.relu(h1 @ p["w2"] + p["b2"])
    logits = h2 @ p["w3"] + p["b3"]
    loss = sg.cross_entropy(logits, y)
    grads = sg.grad(loss, list(params.values()))
    updated = [param - LR * g for param, g in zip(params.values(), grads)]
    step = sg.compile([*updated, loss], inputs=[*params.values(), x, y])
    return step, shapes


def predict(params, x):
    """Eager numpy forward pass (the same symgraph functions work on arrays directly)."""
    h1 = sg.relu(x @ params["w1"] + params["b1"])
    h2 = sg.relu(h1 @ params["w2"] + params["b2"])
    return sg.argmax(h2 @ params["w3"] + params["b3"], axis=1)


def main():
    digits = load_digits()
    x = (digits.data / 16.0).astype(DTYPE)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target.astype(np.int64), test_size=0.25, random_state=0, stratify=digits.target)
    rng = np.random.default_rng(0)
    step, shapes = build_step(x.shape[1], 10)
    params = {name: (rng.standard_normal(shape) * np.sqrt(2.0 / shape[0])).astype(DTYPE)
              if len(shape) == 2 else np.zeros(shape, DTYPE) for name, shape in shapes.items()}
    names = list(shapes)
    start = time.perf_counter()
    for epoch in range(1, EPOCHS + 1):
        order = rng.permutation(len(x_train))
        batches = range(0, len(order) - BATCH + 1, BATCH)
        losses = []
        for i in tqdm(batches, desc=f"epoch {epoch:2d}", leave=False, unit="batch"):
            idx = order[i:i + BATCH]
            *new, loss = step(*(params[n] for n in names), x_train[idx], y_train[idx])
            params = dict(zip(names, new))
            losses.append(float(loss))
        accuracy = np.mean(predict(params, x_test) == y_test)
        print(f"epoch {epoch:2d}  loss {np.mean(losses):.4f}  test accuracy {accuracy:.3f}")
    accuracy = float(np.mean(predict(params, x_test) == y_test))
    print(f"trained {EPOCHS} epochs in {time.perf_counter() - start:.1f} s; "
          f"test accuracy {accuracy:.3f}")
    return accuracy


if __name__ == "__main__":
    main()
