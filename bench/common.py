"""What lampyr's benchmark scripts share: their log lines, a free loopback
port, and starting `lampyr serve` on loopback (its address read from its
log, its management token from its data directory)."""

import os
import re
import socket
import subprocess
import sys
import threading


def logger(tag):
    """`log(msg)` and `die(msg)` that print `[tag] msg` to stderr."""

    def log(msg):
        print(f"[{tag}] {msg}", file=sys.stderr, flush=True)

    def die(msg):
        log(f"error: {msg}")
        sys.exit(1)

    return log, die


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(binary, data, die, args=()):
    """Starts `binary serve` on 127.0.0.1 with data directory `data`; returns
    the process (its log drained in the background), its URL and its token."""
    server = subprocess.Popen(
        [binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LAMPYR_LOG": "info", "NO_COLOR": "1"})
    url = None
    for line in server.stderr:
        m = re.search(r"lampyr listening on (http://[0-9.:]+)", line)
        if m:
            url = m.group(1)
            break
    if not url:
        die("lampyr did not start")
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    token = open(os.path.join(data, "token")).read().strip()
    return server, url, token
