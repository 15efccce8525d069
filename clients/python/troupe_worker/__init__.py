"""Write a Troupe worker step in a few lines.

A worker step (``worker = { run = ["python3", "score.py"], batch = 32 }``) starts long-lived
processes that load a model once and then score batches of items. This module speaks the wire
format for you (JSON lines over stdin/stdout, see docs/workflow-spec.md, "Worker steps")::

    import troupe_worker

    def load():
        return MyModel.from_file("weights.json")    # once per worker process

    def score_batch(model, items):
        return [model.predict(x) for x in items]    # one output per item, in order

    troupe_worker.serve(load=load, score_batch=score_batch)

An output is any JSON value. To fail one item, put an ``Exception`` in its place (or raise from
``score`` when you pass ``score=`` instead of ``score_batch=``); the rest of the batch succeeds.
If ``score_batch`` raises, every item of that batch fails with the message, and the worker goes on.
``print()`` inside your code goes to the worker's log (stderr), never into the protocol.

With traces on (``--otlp-endpoint``) each task carries its attempt span's W3C ``traceparent``, so
spans your code makes join the workflow's trace under that attempt: a ``score_batch`` (or
``score``) that declares a ``traceparents`` (``traceparent``) keyword parameter gets them, one per
item (``None`` when traces are off), and ``with_tasks=True`` gives each :class:`Task` a
``traceparent`` attribute. Functions without the parameter are called as before. The worker
process itself runs with ``TRACEPARENT`` set to its step's span.
"""

import inspect
import json
import os
import sys
import traceback

__all__ = ["serve", "Task"]


class Task:
    """One task of a batch: its id, attempt number, item, (for ``from`` steps) input and (with
    traces on) the W3C ``traceparent`` of its attempt's span, else ``None``."""

    __slots__ = ("id", "attempt", "item", "input", "traceparent")

    def __init__(self, raw):
        self.id = raw["id"]
        self.attempt = raw.get("attempt", 1)
        self.item = raw.get("item")
        self.input = raw.get("input")
        self.traceparent = raw.get("traceparent")


def _takes(fn, name):
    """Whether ``fn`` accepts the keyword argument ``name`` (declared, or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(
        p.kind == p.VAR_KEYWORD
        or (p.name == name and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        for p in params
    )


def _result(task_id, value):
    if isinstance(value, BaseException):
        return {"id": task_id, "error": "%s: %s" % (type(value).__name__, value)}
    return {"id": task_id, "output": value}


def _run_batch(model, tasks, score_batch, score, with_tasks):
    if score is not None:
        extra = _takes(score, "traceparent")
        out = []
        for t in tasks:
            try:
                arg = t if with_tasks else t.item
                value = score(model, arg, traceparent=t.traceparent) if extra else score(model, arg)
                out.append(_result(t.id, value))
            except Exception as e:  # one bad item fails alone
                traceback.print_exc(file=sys.stderr)
                out.append(_result(t.id, e))
        return out
    try:
        args = tasks if with_tasks else [t.item for t in tasks]
        if _takes(score_batch, "traceparents"):
            values = score_batch(model, args, traceparents=[t.traceparent for t in tasks])
        else:
            values = score_batch(model, args)
        values = list(values)
    except Exception as e:
        traceback.print_exc(file=sys.stderr)
        return [_result(t.id, e) for t in tasks]
    if len(values) != len(tasks):
        err = ValueError(
            "score_batch returned %d outputs for %d items" % (len(values), len(tasks))
        )
        return [_result(t.id, err) for t in tasks]
    return [_result(t.id, v) for t, v in zip(tasks, values)]


def serve(load=None, score_batch=None, score=None, with_tasks=False, stdin=None, stdout=None):
    """Loads the model, says ready, then answers batches until stdin closes.

    ``load()`` returns the model (or anything your scorer needs); ``score_batch(model, items)``
    returns one output per item, or ``score(model, item)`` returns one output. With
    ``with_tasks=True`` your function gets :class:`Task` objects (id, attempt, item, input,
    traceparent) instead of bare items. A ``traceparents=`` (``traceparent=``) keyword
    parameter, if your function declares one, gets the tasks' trace contexts.
    """
    if (score_batch is None) == (score is None):
        raise TypeError("give exactly one of score_batch= or score=")
    proto_in = stdin if stdin is not None else sys.stdin
    if stdout is not None:
        proto_out = stdout
    else:
        # Keep the real stdout for the protocol; whatever the user's code prints goes to stderr.
        proto_out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
        sys.stdout.flush()
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    model = load() if load is not None else None
    proto_out.write('{"ready": true}\n')
    proto_out.flush()
    for line in proto_in:
        if not line.strip():
            continue
        request = json.loads(line)
        tasks = [Task(t) for t in request["tasks"]]
        results = _run_batch(model, tasks, score_batch, score, with_tasks)
        proto_out.write(json.dumps({"results": results}, separators=(",", ":")) + "\n")
        proto_out.flush()
