"""Trains the example's model: logistic regression on a synthetic, deterministic data set, with
the Python standard library only. Writes model.json next to this file (the repo ships the result,
so nothing is trained or downloaded at run time; run this to re-create it).

    python3 examples/batch-scoring-warm/train.py
"""

import json
import math
import os
import random

FEATURES = 4
TRUE_W = [1.5, -2.0, 0.75, 0.5]
TRUE_B = -0.25


def features(item):
    """The features of item `item` (the same function the worker uses)."""
    r = random.Random(item)
    return [r.uniform(-1.0, 1.0) for _ in range(FEATURES)]


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


def main():
    rng = random.Random(7)
    data = []
    for item in range(5000):
        x = features(item + 1_000_000)  # training items are not the scored ones
        p = sigmoid(sum(w * v for w, v in zip(TRUE_W, x)) + TRUE_B)
        data.append((x, 1.0 if rng.random() < p else 0.0))
    w, b, lr = [0.0] * FEATURES, 0.0, 0.5
    for _ in range(200):
        gw, gb = [0.0] * FEATURES, 0.0
        for x, y in data:
            err = sigmoid(sum(wi * xi for wi, xi in zip(w, x)) + b) - y
            gw = [g + err * xi for g, xi in zip(gw, x)]
            gb += err
        w = [wi - lr * g / len(data) for wi, g in zip(w, gw)]
        b -= lr * gb / len(data)
    acc = sum((sigmoid(sum(wi * xi for wi, xi in zip(w, x)) + b) > 0.5) == (y == 1.0) for x, y in data) / len(data)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.json")
    with open(out, "w") as f:
        json.dump({"weights": [round(v, 6) for v in w], "bias": round(b, 6), "train_accuracy": round(acc, 4)}, f, indent=2)
        f.write("\n")
    print("wrote", out, "train accuracy", round(acc, 4))


if __name__ == "__main__":
    main()
