"""A local endpoint for the tools example: prints each POST (with its Idempotency-Key) and answers
200 {"ok": true}. `python3 receiver.py` listens on 127.0.0.1:9009."""

import json
from http.server import BaseHTTPRequestHandler, HTTPServer


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        print(f"{self.path} (Idempotency-Key {self.headers.get('Idempotency-Key')}): {body}", flush=True)
        reply = json.dumps({"ok": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", 9009), Receiver).serve_forever()
