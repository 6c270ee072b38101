"""A webhook receiver for reportd's tests: verifies every request with the Standard
Webhooks reference library and answers a scripted sequence of status codes.

    receiver.py --secret whsec_… --answers 500,500,200 --port 0 --log requests.jsonl

It prints `listening <port>` once bound, then appends one JSON line per request to the
log: {"id", "timestamp", "signature", "verified", "error", "status", "body"}. After the
scripted answers run out, the last one repeats. Binds 127.0.0.1 only.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    parser.add_argument("--answers", default="200")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    answers = [int(a) for a in args.answers.split(",")]
    webhook = Webhook(args.secret)
    lock = threading.Lock()
    served = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            entry = {
                "id": headers.get("webhook-id"),
                "timestamp": headers.get("webhook-timestamp"),
                "signature": headers.get("webhook-signature"),
                "verified": False,
                "error": None,
            }
            try:
                webhook.verify(body, headers)
                entry["verified"] = True
            except Exception as e:  # any failure is recorded, the test judges it
                entry["error"] = f"{type(e).__name__}: {e}"
            with lock:
                status = answers[min(served[0], len(answers) - 1)]
                served[0] += 1
                entry["status"] = status
                entry["body"] = body.decode("utf-8", "replace")
                with open(args.log, "a", encoding="utf-8") as log:
                    log.write(json.dumps(entry) + "\n")
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
