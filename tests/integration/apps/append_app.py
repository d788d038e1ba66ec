"""A WSGI app for the error-reporting tests: each request appends one entry of the size
asked for, so a test can fill a small filesystem with few requests.

GET /append?size=<n>   appends n random bytes to stream "big" -> 200 "<entry>"
GET /whoami            -> "<pid> <worker_id>" (what harness.Server.wait_ready polls)
GET /raise             raises RuntimeError: how this server reports any application error

An append that raises is not caught here: the server must report it (500, logged).
"""

import os
from urllib.parse import parse_qs

import cometmp

cfg = cometmp.Config()
cfg.storage.segment_bytes = 1 << 20
cfg.storage.preallocate_bytes = 64 * 1024
cfg.compression.min_bytes = 0          # random bytes: nothing to gain
client = cometmp.Client(os.environ["COMETMP_DIR"], config=cfg)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/append":
        size = int(parse_qs(environ.get("QUERY_STRING", "")).get("size", ["16"])[0])
        mid = client.append("big", os.urandom(size))[0]
        body = f"{mid.entry}\n".encode()
    elif path == "/raise":
        raise RuntimeError("an application error, for comparison")
    elif path == "/whoami":
        body = f"{os.getpid()} {cometmp.worker_id()}\n".encode()
    else:
        body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
