# The Python baseline for bench/coldstart: a minimal http.server that imports
# the same handler module lampyr runs and answers every request with it,
# in-process, with no platform in between.
#
#   python3 bench/coldstart/bare-python-server.py PORT HANDLER_FILE [FUNCTION]
#
# run.py measures the time from spawning this process to its first
# successful HTTP response. (http.server imports less than asyncio, so it is
# the faster-starting of the two standard-library servers.)
import importlib
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

if len(sys.argv) < 3:
    sys.exit("usage: bare-python-server.py PORT HANDLER_FILE [FUNCTION]")
directory, base = os.path.split(os.path.abspath(sys.argv[2]))
sys.path.insert(0, directory)
handler = getattr(importlib.import_module(os.path.splitext(base)[0]), sys.argv[3] if len(sys.argv) > 3 else "handler")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        try:
            r = handler({"rawPath": self.path, "headers": dict(self.headers)}, {})
            status, headers, body = int(r.get("statusCode", 200)), r.get("headers") or {}, r.get("body") or ""
        except Exception as e:  # noqa: BLE001 - answer 500 like the Node.js baseline
            status, headers, body = 500, {"content-type": "text/plain"}, repr(e) + "\n"
        data = body.encode() if isinstance(body, str) else bytes(body)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
