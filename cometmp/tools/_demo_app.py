"""The WSGI app `cometmp demo` serves with gunicorn: one append per request.

GET /append?id=<id>[&key=<key>]  appends ``id`` to the run's family (env COMETMP_DEMO_FAMILY)
                                 -> "<shard> <entry>"
GET /                            -> "ok" (readiness probe)

The client is opened lazily in each worker, after fork (cometmp would also re-attach a
client inherited from the master, see I10).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

import cometmp

_log = None


def _requests_log():
    global _log
    if _log is None:
        client = cometmp.Client(os.environ["COMETMP_DIR"])
        _log = client.log(os.environ["COMETMP_DEMO_FAMILY"],
                          shards=int(os.environ.get("COMETMP_DEMO_SHARDS", "8")))
    return _log


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/append":
        q = parse_qs(environ.get("QUERY_STRING", ""))
        rid = q.get("id", [""])[0].encode()
        key = q.get("key", [None])[0]
        mid = _requests_log().append(rid, key=key)
        body = f"{mid.shard} {mid.entry}\n".encode()
    else:
        body = b"ok\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
