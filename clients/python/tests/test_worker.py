"""The worker protocol as troupe_worker speaks it, run in a real subprocess."""

import io
import json
import os
import subprocess
import sys
import textwrap

import pytest

import troupe_worker

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.dirname(HERE)


def run_worker(code, requests, timeout=20):
    """Runs `code` as a worker process, writes the request lines, returns its stdout lines."""
    env = dict(os.environ, PYTHONPATH=PKG)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return [json.loads(l) for l in proc.stdout.splitlines() if l.strip()], proc


def batch(*items, attempt=1):
    return {"tasks": [{"id": "t%d" % i, "attempt": attempt, "item": x} for i, x in enumerate(items)]}


def test_ready_then_one_answer_per_batch_in_order():
    lines, _ = run_worker(
        """
        import troupe_worker
        troupe_worker.serve(load=lambda: 10, score_batch=lambda m, xs: [x * m for x in xs])
        """,
        [batch(1, 2, 3), batch(4)],
    )
    assert lines[0] == {"ready": True}
    assert lines[1] == {"results": [{"id": "t0", "output": 10}, {"id": "t1", "output": 20}, {"id": "t2", "output": 30}]}
    assert lines[2] == {"results": [{"id": "t0", "output": 40}]}
    assert len(lines) == 3


def test_prints_in_user_code_go_to_stderr_not_the_protocol():
    lines, proc = run_worker(
        """
        import troupe_worker
        def load():
            print("loading the model")
            return None
        def score(m, x):
            print("scoring", x)
            return x
        troupe_worker.serve(load=load, score=score)
        """,
        [batch("a")],
    )
    assert lines == [{"ready": True}, {"results": [{"id": "t0", "output": "a"}]}]
    assert "loading the model" in proc.stderr and "scoring a" in proc.stderr


def test_one_bad_item_fails_alone_and_a_raising_batch_fails_whole():
    lines, _ = run_worker(
        """
        import troupe_worker
        def score(m, x):
            if x == "bad":
                raise ValueError("cannot parse")
            return x
        troupe_worker.serve(score=score)
        """,
        [batch("ok", "bad")],
    )
    assert lines[1]["results"][0] == {"id": "t0", "output": "ok"}
    assert lines[1]["results"][1] == {"id": "t1", "error": "ValueError: cannot parse"}
    lines, _ = run_worker(
        """
        import troupe_worker
        def score_batch(m, xs):
            raise RuntimeError("CUDA out of memory")
        troupe_worker.serve(score_batch=score_batch)
        """,
        [batch(1, 2), batch(3)],
    )
    assert all(r["error"] == "RuntimeError: CUDA out of memory" for r in lines[1]["results"])
    assert len(lines) == 3, "the worker goes on after a failed batch"


def test_a_wrong_number_of_outputs_fails_the_batch_with_the_counts():
    out = io.StringIO()
    troupe_worker.serve(
        score_batch=lambda m, xs: [1],
        stdin=io.StringIO(json.dumps(batch(1, 2)) + "\n"),
        stdout=out,
    )
    lines = [json.loads(l) for l in out.getvalue().splitlines()]
    assert "returned 1 outputs for 2 items" in lines[1]["results"][0]["error"]


def test_tasks_carry_attempt_and_input():
    out = io.StringIO()
    req = {"tasks": [{"id": "a", "attempt": 3, "item": 7, "input": {"x": 1}}]}
    troupe_worker.serve(
        score=lambda m, t: [t.attempt, t.item, t.input],
        with_tasks=True,
        stdin=io.StringIO(json.dumps(req) + "\n"),
        stdout=out,
    )
    assert json.loads(out.getvalue().splitlines()[1])["results"][0]["output"] == [3, 7, {"x": 1}]


def test_exactly_one_scorer():
    with pytest.raises(TypeError):
        troupe_worker.serve(stdin=io.StringIO(""), stdout=io.StringIO())


TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_traceparents_reach_functions_that_ask_for_them_and_others_run_as_before():
    req = {"tasks": [{"id": "a", "attempt": 1, "item": 1, "traceparent": TP}, {"id": "b", "attempt": 1, "item": 2}]}

    def run(**kw):
        out = io.StringIO()
        troupe_worker.serve(stdin=io.StringIO(json.dumps(req) + "\n"), stdout=out, **kw)
        return [r["output"] for r in json.loads(out.getvalue().splitlines()[1])["results"]]

    # Declared keyword: one traceparent per item, None where the task has none.
    assert run(score_batch=lambda m, xs, traceparents: [[x, tp] for x, tp in zip(xs, traceparents)]) == [[1, TP], [2, None]]
    assert run(score=lambda m, x, traceparent=None: [x, traceparent]) == [[1, TP], [2, None]]
    # Through **kwargs too.
    assert run(score_batch=lambda m, xs, **kw: kw["traceparents"]) == [TP, None]
    # A function written before traceparents existed gets exactly what it got before.
    assert run(score_batch=lambda m, xs: [x * 10 for x in xs]) == [10, 20]
    # Task objects carry it as an attribute.
    assert run(score=lambda m, t: t.traceparent, with_tasks=True) == [TP, None]


def test_a_worker_process_reads_its_traceparent_from_a_real_batch_line():
    lines, _ = run_worker(
        """
        import troupe_worker
        def score_batch(model, items, traceparents):
            return [tp.split("-")[2] for tp in traceparents]
        troupe_worker.serve(score_batch=score_batch)
        """,
        [{"tasks": [{"id": "t0", "attempt": 2, "item": None, "traceparent": TP}]}],
    )
    assert lines[1] == {"results": [{"id": "t0", "output": "b7ad6b7169203331"}]}
