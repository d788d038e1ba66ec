"""A WSGI app that logs one event per request, ready for gunicorn or uWSGI.

    export COMETMP_DIR=/tmp/events
    gunicorn -c python:cometmp.integrations.gunicorn_conf -w 4 -b 127.0.0.1:8000 wsgi_app:app
    uwsgi --master --processes 4 --enable-threads --import cometmp.integrations.uwsgi \
          --http-socket 127.0.0.1:8000 --wsgi-file wsgi_app.py --callable app

    curl 127.0.0.1:8000/hello            # -> "logged to events:shard:0002 entry 17 by worker 2"
    cometmp status $COMETMP_DIR           # which worker owns which shard
    cometmp tail $COMETMP_DIR 'events:*'  # the events

Each worker appends key=None events to the shards it owns, so workers never wait for
each other. A request carrying ?user=... is keyed, so one user's events stay in order on
one shard, whichever worker served them.
"""

import json
import os
import time
from urllib.parse import parse_qs

import cometmp

client = cometmp.Client(os.environ.get("COMETMP_DIR", "/tmp/events"))
events = client.log("events", shards=8)


def app(environ, start_response):
    q = parse_qs(environ.get("QUERY_STRING", ""))
    user = q.get("user", [None])[0]
    event = {"path": environ.get("PATH_INFO"), "user": user, "t": time.time()}
    mid = events.append(json.dumps(event).encode(), key=user)
    body = (f"logged to {mid.stream} entry {mid.entry} by worker {cometmp.worker_id()}\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
