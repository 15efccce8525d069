"""The example's warm worker: loads model.json once, then scores batches of item ids.

Run by the `score` step of examples/batch-scoring-warm.toml through troupe_worker
(clients/python), which speaks the JSON-lines worker protocol.
"""

import json
import math
import os
import sys

import troupe_worker

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import features  # noqa: E402  (the same features the model was trained on)


def load():
    path = os.environ.get("MODEL", os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.json"))
    with open(path) as f:
        model = json.load(f)
    print("loaded", path, "weights", model["weights"], file=sys.stderr)
    return model


def score_batch(model, items):
    w, b = model["weights"], model["bias"]
    out = []
    for item in items:
        z = sum(wi * xi for wi, xi in zip(w, features(item))) + b
        p = 1.0 / (1.0 + math.exp(-z))
        out.append({"item": item, "p": round(p, 4), "label": int(p > 0.5)})
    return out


troupe_worker.serve(load=load, score_batch=score_batch)
