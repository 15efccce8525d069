"""troupe_client against a small fake of the Troupe API (a real HTTP server on loopback)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from troupe_client import Client, TroupeError


class Fake(BaseHTTPRequestHandler):
    calls = []
    busy_left = 0

    def log_message(self, *a):
        pass

    def _send(self, code, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Fake.calls.append(("POST", self.path, body))
        if Fake.busy_left > 0:
            Fake.busy_left -= 1
            return self._send(429, {"error": "busy"}, [("retry-after", "0")])
        if "bad" in body.get("spec_toml", ""):
            return self._send(400, {"error": "invalid spec: spec_toml:1: name missing"})
        self._send(201, {"id": "wf-1", "created": True})

    def do_GET(self):
        Fake.calls.append(("GET", self.path, None))
        if self.path.startswith("/v1/workflows/wf-1"):
            n = sum(1 for c in Fake.calls if c[1].startswith("/v1/workflows/wf-1"))
            return self._send(200, {"id": "wf-1", "status": "succeeded" if n >= 3 else "running"})
        if self.path.startswith("/v1/dlq"):
            return self._send(200, {"dead_letters": [{"id": 1, "step": "score"}], "total": 1})
        self._send(404, {"error": "no such route"})


@pytest.fixture
def api():
    Fake.calls, Fake.busy_left = [], 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield "http://127.0.0.1:%d" % srv.server_address[1]
    srv.shutdown()


def test_submit_sends_the_spec_with_an_idempotency_key_and_rides_through_429(api):
    Fake.busy_left = 2
    out = Client(api).submit('name = "x"', params={"n": 3})
    assert out["id"] == "wf-1"
    posts = [c for c in Fake.calls if c[0] == "POST"]
    assert len(posts) == 3, "two 429s, then accepted"
    keys = {p[2]["idempotency_key"] for p in posts}
    assert len(keys) == 1 and keys.pop().startswith("py-"), "the same key on every retry"
    assert posts[0][2]["params"] == {"n": 3}


def test_errors_carry_status_and_message(api):
    with pytest.raises(TroupeError) as e:
        Client(api).submit("bad")
    assert e.value.status == 400 and "name missing" in e.value.message


def test_wait_polls_until_the_workflow_ends_and_dlq_lists(api):
    c = Client(api)
    assert c.wait("wf-1", timeout=10, poll=0.01)["status"] == "succeeded"
    assert c.dlq(step="score") == [{"id": 1, "step": "score"}]
    assert any("step=score" in c[1] for c in Fake.calls)


def test_an_unreachable_node_is_a_clear_error():
    with pytest.raises(TroupeError) as e:
        Client("http://127.0.0.1:9", retries=1).get("wf-1")
    assert "cannot reach" in str(e.value)
