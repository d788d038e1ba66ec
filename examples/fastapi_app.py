"""A FastAPI app that logs one entry per request, under gunicorn + UvicornWorker or
``uvicorn --workers N``.

    export COMETMP_DIR=/tmp/events
    gunicorn -c python:cometmp.integrations.gunicorn_conf -k uvicorn_worker.UvicornWorker \
             -w 4 -b 127.0.0.1:8000 fastapi_app:app
    uvicorn --workers 4 --port 8000 fastapi_app:app

    curl '127.0.0.1:8000/append?id=a1'           # -> {"stream": "requests:shard:0002", ...}
    curl '127.0.0.1:8000/recent?limit=5'         # the last 5 entries of each shard
    cometmp status $COMETMP_DIR                   # which worker owns which shard

GET /append?id=<id>[&key=<key>]  appends ``id`` (keyed if ``key`` is given): one entry
                                 per answered request -> {"stream", "entry", "worker"}
GET /recent?limit=<n>            reads back the last n entries of every shard
GET /whoami                      -> "<pid> <worker_id>"

The import of cometmp.integrations.uvicorn is the one line uvicorn --workers N needs
(each spawned worker joins the registry); under gunicorn the config's hooks do it and
the import does nothing. The middleware makes a worker leave at a graceful exit, so the
last one removes the registry (without it the exit counts as a death: still correct).
"""

import os

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

import cometmp
import cometmp.integrations.uvicorn  # uvicorn --workers N: each worker joins the registry

client = cometmp.Client(os.environ["COMETMP_DIR"])
requests_log = client.log("requests", shards=int(os.environ.get("COMETMP_SHARDS", "8")))
app = FastAPI()
app.add_middleware(cometmp.integrations.uvicorn.LeaveAtShutdown)


@app.get("/append")
async def append(id: str, key: str | None = None) -> dict:
    mid = requests_log.append(id.encode(), key=key)
    return {"stream": mid.stream, "entry": mid.entry, "worker": cometmp.worker_id()}


@app.get("/recent")
async def recent(limit: int = 10) -> list[dict]:
    return [{"stream": stream, "entry": m.id.entry, "data": bytes(m.data).decode()}
            for stream in client.streams("requests:shard:*")
            for m in client.list_recent(stream, limit)]


@app.get("/whoami", response_class=PlainTextResponse)
async def whoami() -> str:
    return f"{os.getpid()} {cometmp.worker_id()}\n"
