"""A bare ASGI app (no framework, no lifespan support, no LeaveAtShutdown) with the
one-line uvicorn hook: what tests/integration/test_asgi_servers.py checks about a worker
that never leaves (its graceful exit counts as a death).

GET /append?id=<id>   appends id to the "requests" family -> "<stream> <entry> <worker_id>"
GET /whoami           -> "<pid> <worker_id>"
"""

import os
from urllib.parse import parse_qs

import cometmp
import cometmp.integrations.uvicorn  # noqa: F401  (uvicorn --workers N: join the registry)

client = cometmp.Client(os.environ["COMETMP_DIR"])
requests_log = client.log("requests", shards=8)


async def app(scope, receive, send):
    if scope["type"] != "http":
        raise RuntimeError(f"unsupported scope {scope['type']}")  # lifespan: unsupported
    if scope["path"] == "/append":
        rid = parse_qs(scope["query_string"].decode()).get("id", [""])[0]
        mid = requests_log.append(rid.encode())
        body = f"{mid.stream} {mid.entry} {cometmp.worker_id()}\n".encode()
    else:
        body = f"{os.getpid()} {cometmp.worker_id()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
