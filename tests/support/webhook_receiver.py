"""A webhook receiver for the tests: verifies every delivery with the
`standardwebhooks` package (an implementation Coffer did not write) and
appends what it got, one JSON line each, to a log file.

Usage: webhook_receiver.py SECRET_FILE LOG PORT_FILE (the secret is read
at each delivery: the test writes it once the endpoint exists)
While the file LOG.down exists it answers 503 without verifying (a receiver
that is down); while LOG.hang exists it never answers (a receiver that
times out)."""

import http.server
import json
import os
import sys
import time

from standardwebhooks.webhooks import Webhook

secret_file, log, port_file = sys.argv[1:4]


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if os.path.exists(log + ".hang"):
            time.sleep(3600)
        if os.path.exists(log + ".down"):
            self.send_response(503)
            self.end_headers()
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            with open(secret_file) as f:
                hook = Webhook(f.read().strip())
            payload = hook.verify(body, headers)
            verified, error = True, None
        except Exception as e:  # any failure to verify is recorded as such
            payload, verified, error = None, False, str(e)
        with open(log, "a") as out:
            out.write(json.dumps({
                "id": headers.get("webhook-id"),
                "verified": verified,
                "error": error,
                "payload": payload,
                "body": body.decode("utf-8", "replace"),
                "headers": {k: headers.get(k) for k in ("webhook-id", "webhook-timestamp", "webhook-signature")},
            }) + "\n")
        self.send_response(204 if verified else 400)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
