"""Local services for the agent examples, on 127.0.0.1:9010 (python3 examples/services.py):

- POST /outbox   prints each message (with its Idempotency-Key) and answers {"ok": true}: the
                 mail gateway of inbox_triage.yaml;
- GET  /kb?q=…   answers {"answer": …} from a few help-centre articles: the knowledge base of
                 customer_service.yaml.
"""

import json
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

ARTICLES = {
    "return": "Items can be returned within 30 days; print the label from your account page.",
    "password": "Reset your password from the sign-in page; the link is valid for one hour.",
    "shipping": "Standard shipping takes three to five working days.",
}


class Services(BaseHTTPRequestHandler):
    def reply(self, value):
        body = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        print(f"{self.path} (Idempotency-Key {self.headers.get('Idempotency-Key')}): {body}", flush=True)
        self.reply({"ok": True})

    def do_GET(self):
        url = urlparse(self.path)
        question = " ".join(parse_qs(url.query).get("q", [""])).lower()
        found = [text for word, text in ARTICLES.items() if word in question]
        self.reply({"answer": found[0] if found else "No article matches; a person will follow up."})

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", 9010), Services).serve_forever()
