"""A webhook receiver for tests/webhooks.rs: verifies every delivery's signature with the
`standardwebhooks` package (pip install standardwebhooks) and reports it on stdout.

Usage: receiver.py  -- prints `port N`, then one JSON line per request received:
{"path", "id", "timestamp", "type", "verified", "error"?, "answered"}.

Control (from the test, on the same port):
  PUT /_secret/<name>  body: the `whsec_` secret deliveries to /hook/<name> are signed with
  PUT /_fail/<name>    body: how many of the next deliveries to /hook/<name> answer 500
"""

import http.server
import json
import sys
import threading

from standardwebhooks import Webhook, WebhookVerificationError

secrets = {}
failing = {}
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):
        data = self.body().decode()
        parts = self.path.strip("/").split("/")
        with lock:
            if parts[0] == "_secret":
                secrets[parts[1]] = data
            elif parts[0] == "_fail":
                failing[parts[1]] = int(data)
        self.answer(204)

    def do_POST(self):
        data = self.body()
        name = self.path.strip("/").split("/")[-1]
        report = {
            "path": self.path,
            "id": self.headers.get("webhook-id"),
            "timestamp": self.headers.get("webhook-timestamp"),
            "verified": False,
        }
        with lock:
            secret = secrets.get(name)
            fail = failing.get(name, 0)
            if fail > 0:
                failing[name] = fail - 1
        try:
            if secret is None:
                raise WebhookVerificationError("no secret registered for " + name)
            payload = Webhook(secret).verify(data, dict(self.headers.items()))
            report["verified"] = True
            report["type"] = payload.get("type")
            report["data"] = payload.get("data")
        except Exception as e:  # noqa: BLE001 - every failure is reported, none crashes the server
            report["error"] = f"{type(e).__name__}: {e}"
        status = 500 if fail > 0 else (200 if report["verified"] else 400)
        report["answered"] = status
        with lock:  # one whole line per report, whatever the threads do
            sys.stdout.write(json.dumps(report) + "\n")
            sys.stdout.flush()
        self.answer(status)

    def log_message(self, *_):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"port {server.server_address[1]}", flush=True)
server.serve_forever()
