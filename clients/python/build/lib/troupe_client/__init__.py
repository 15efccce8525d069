"""A thin client of the Troupe HTTP API (stdlib only): submit, get, wait, dlq.

    from troupe_client import Client
    c = Client("http://127.0.0.1:7070")
    wf = c.submit(open("examples/batch-scoring-warm.toml").read(), params={"items": 1000})
    done = c.wait(wf["id"])
    print(done["status"])

Errors from the API raise :class:`TroupeError` with the HTTP status and the server's message.
Submissions carry an idempotency key (a random one unless you pass your own), so a retried
submit never starts a second workflow.
"""

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

__all__ = ["Client", "TroupeError", "TERMINAL"]

TERMINAL = ("succeeded", "degraded", "failed", "cancelled")


class TroupeError(Exception):
    def __init__(self, status, message):
        super().__init__("HTTP %s: %s" % (status, message))
        self.status = status
        self.message = message


class Client:
    def __init__(self, url="http://127.0.0.1:7070", token=None, timeout=30.0, retries=5):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries

    def _call(self, method, path, body=None, query=None):
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = None
        headers = {}
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        if self.token:
            headers["authorization"] = "Bearer " + self.token
        delay = 0.2
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    text = resp.read()
                    return json.loads(text) if text else None
            except urllib.error.HTTPError as e:
                text = e.read().decode(errors="replace")
                try:
                    message = json.loads(text).get("error", text)
                except ValueError:
                    message = text
                retryable = e.code in (429, 503)
                if not retryable or attempt == self.retries:
                    raise TroupeError(e.code, message) from None
                after = e.headers.get("retry-after")
                time.sleep(float(after) if after and after.isdigit() else delay)
            except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
                if attempt == self.retries:
                    raise TroupeError(0, "cannot reach %s: %s" % (self.url, e)) from None
                time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def submit(self, spec_toml, params=None, idempotency_key=None):
        """Submits a workflow (its TOML text); returns the workflow summary (with ``id``)."""
        body = {
            "spec_toml": spec_toml,
            "idempotency_key": idempotency_key or "py-" + uuid.uuid4().hex,
        }
        if params:
            body["params"] = params
        return self._call("POST", "/v1/workflows", body)

    def get(self, workflow_id):
        return self._call("GET", "/v1/workflows/%s" % workflow_id)

    def wait(self, workflow_id, timeout=3600.0, poll=0.2):
        """Polls until the workflow ends; returns its detail. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            wf = self.get(workflow_id)
            if wf.get("status") in TERMINAL:
                return wf
            if time.monotonic() > deadline:
                raise TimeoutError("workflow %s still %s" % (workflow_id, wf.get("status")))
            time.sleep(poll)

    def dlq(self, workflow=None, step=None, limit=1000):
        """Dead letters (a list), filtered like ``troupe dlq``."""
        out = self._call("GET", "/v1/dlq", query={"workflow": workflow, "step": step, "limit": limit})
        return out["dead_letters"]

    def redrive(self, ids=None, workflow=None, step=None):
        body = {k: v for k, v in {"ids": ids, "workflow": workflow, "step": step}.items() if v}
        return self._call("POST", "/v1/dlq/redrive", body)
