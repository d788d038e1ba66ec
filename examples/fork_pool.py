"""A hand-made os.fork worker pool using cometmp's registry: the protocol any prefork
server can follow. The parent supervises; each child joins, appends, and may die.

    python fork_pool.py /tmp/pool-log

The parent creates the registry (Supervisor), forks 3 workers, kills one with SIGKILL,
reports the death (child_exited) and forks a replacement, which takes the dead worker's
slot, so the other workers keep their shards. At the end it prints who wrote where.
"""

import os
import signal
import sys
import time

import cometmp
import cometmp.tools.status
from cometmp import registry

WORKERS = 3


def worker(directory: str) -> None:
    registry.join(directory)                 # after fork, never before
    with cometmp.Client(directory) as client:
        log = client.log("jobs", shards=6)
        me = cometmp.worker_id()
        for i in range(1000):
            log.append(f"worker {me} pid {os.getpid()} job {i}".encode())  # its own shards
            time.sleep(0.001)
    registry.leave()                         # graceful exit: the slot is freed for a replacement


def spawn(directory: str) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            worker(directory)
        finally:
            os._exit(0)
    return pid


def main(directory: str) -> None:
    sup = cometmp.Supervisor(directory, process_count=WORKERS).start()
    try:
        pids = [spawn(directory) for _ in range(WORKERS)]
        time.sleep(0.3)
        print(cometmp.tools.status.render_status(cometmp.tools.status.registry_status(directory)))
        victim = pids[1]
        os.kill(victim, signal.SIGKILL)        # an OOM kill, say
        os.waitpid(victim, 0)
        sup.child_exited(victim)               # the slot is VACANT now
        pids[1] = spawn(directory)             # the replacement takes the same slot
        time.sleep(0.3)
        print(cometmp.tools.status.render_status(cometmp.tools.status.registry_status(directory)))
        for pid in pids:
            os.waitpid(pid, 0)
            sup.child_exited(pid)
    finally:
        sup.close()                            # the last master unlinks the registry
    with cometmp.Client(directory, readonly=True) as client:
        for stream in client.streams("jobs:*"):
            writers = {bytes(m.data).split(b" job")[0].decode() for m in client.scan(stream)}
            print(stream, client.length(stream), "entries, written by", sorted(writers))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cometmp-fork-pool")
