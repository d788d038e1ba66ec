"""Example WSGI app: every request appends one entry to a cometmp log.

    COMETMP_DIR=/tmp/cmdata uwsgi --ini uwsgi.ini --http-socket 127.0.0.1:8001

GET /append?id=<id>[&key=<key>]  appends ``id`` (keyed if ``key`` is given) -> 200 "<shard> <entry>"
GET /whoami                      -> "<pid> <worker_id>"
GET /noop?id=<id>[&key=<key>]    the same work without the append (benchmark baseline)
GET /sleep?s=<seconds>           sleeps (to trigger harakiri)
The client is created at import, so it works with and without --preload.
"""

import os
import time
from urllib.parse import parse_qs

import cometmp

SHARDS = int(os.environ.get("COMETMP_SHARDS", "8"))
if not os.environ.get("COMETMP_DIR"):
    raise SystemExit("set COMETMP_DIR to the data directory (a local filesystem path)")
client = cometmp.Client(os.environ["COMETMP_DIR"])
requests_log = client.log("requests", shards=SHARDS)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path in ("/append", "/noop"):
        q = parse_qs(environ.get("QUERY_STRING", ""))
        rid = q.get("id", [""])[0].encode()
        key = q.get("key", [None])[0]
        if path == "/append":
            mid = requests_log.append(rid, key=key)
            body = f"{mid.shard} {mid.entry}\n".encode()
        else:  # the same request handling without the append (benchmark baseline)
            body = f"{len(rid)} {key}\n".encode()
    elif path == "/sleep":
        time.sleep(float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[0]))
        body = b"slept\n"
    elif path == "/whoami":
        body = f"{os.getpid()} {cometmp.worker_id()}\n".encode()
    else:
        body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
