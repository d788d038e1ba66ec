"""A writer process for the kill -9 tests: appends until it is killed.

    python killable_writer.py ROOT RUN ACK_FD

Opens ROOT with 1 MiB segments, writes "ready\\n" to ACK_FD, then appends forever to the
two shards of family "kill": single appends, batches (append_many) and now and then an
entry of 600 KiB that forces a rotation. After each call returns it writes one line per
acknowledged entry to ACK_FD: "<shard> <entry> <run>:<seq>". The payload of (run, seq) is
payload(run, seq, size) below, so the parent can check every byte it reads back.
"""

from __future__ import annotations

import os
import random
import sys
import time

import cometmp


def payload(run: int, seq: int, size: int) -> bytes:
    head = f"<{run}:{seq}:{size}>".encode()
    return (head * (size // len(head) + 1))[:max(size, len(head))]


def parse(data: bytes) -> tuple[int, int, int]:
    """(run, seq, size) named by a payload."""
    run, seq, size = data[1:data.index(b">")].split(b":")
    return int(run), int(seq), int(size)


def main() -> None:
    root, run, ack_fd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rnd = random.Random(run)
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 1 << 20
    cfg.storage.preallocate_bytes = 64 << 10
    cfg.compression.min_bytes = 0
    client = cometmp.Client(root, config=cfg)
    lg = client.log("kill", shards=2)
    os.write(ack_fd, b"ready\n")
    seq = 0
    while True:
        shard = rnd.randrange(2)
        key = "b" if shard else "a"  # pick_shard("a", 2) == 0, pick_shard("b", 2) == 1
        r = rnd.random()
        if r < 0.5:
            ids = [lg.append(payload(run, seq, rnd.randrange(0, 2000)), key=key)]
            n = 1
        elif r < 0.99:
            n = rnd.randint(2, 200)
            ids = lg.append_many([payload(run, seq + i, rnd.randrange(0, 300)) for i in range(n)], key=key)
        else:
            ids = [lg.append(payload(run, seq, 600 << 10), key=key)]
            n = 1
        os.write(ack_fd, b"".join(b"%d %d %d:%d\n" % (m.shard, m.entry, run, seq + i)
                                  for i, m in enumerate(ids)))
        seq += n
        if rnd.random() < 0.3:
            time.sleep(0.001)


if __name__ == "__main__":
    main()
