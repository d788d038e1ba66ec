"""The child of tests/multiprocess/test_spawned_workers.py, started with multiprocessing's
*spawn* method (a fresh interpreter, as uvicorn starts its workers): it imports the
uvicorn hook, joins if told a worker count, reports over its own pipe, and exits normally
when told (or after 120 s)."""

import os


def run(directory, workers, conn) -> None:
    os.environ["COMETMP_DIR"] = directory
    import cometmp
    import cometmp.integrations.uvicorn as hook   # the one line of the app module

    wid = hook.join(directory, workers=workers) if workers is not None else None
    conn.send((os.getpid(), wid, cometmp.worker_id(), hook.spawned_worker_count()))
    conn.poll(120)
