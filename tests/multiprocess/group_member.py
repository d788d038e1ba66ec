"""One live member of a consumer group, run as its own process by test_group_members.py.

    python group_member.py ROOT GROUP PATTERN LOG [--work S] [--hold] [--batch N]

Reads PATTERN as a member of GROUP (no assignment: live membership) and appends to LOG,
one line per event, times from time.monotonic() (CLOCK_MONOTONIC: comparable across the
processes of one machine)::

    R <t>                       the first read() is about to start
    S <t> <stream,stream,...>   assigned() changed (written once at start, then on change)
    D <t> <stream> <entry> <n>  delivered, the entry's n-th delivery (written before the work)
    A <t> <stream> <entry>      acknowledged (written after ack() returned)
    L <t>                       left (close() returned)

``--work S`` sleeps S seconds per batch before acking (the "processing"); ``--hold``
acks nothing and keeps reading (its deliveries stay unacked until it dies); ``--shuffle
SEED`` acks each batch one entry per ack() call in a random order (an A line after each
call returned: per-message acks, the ack window's path); the member
leaves when the file ``LOG.stop`` appears.
"""

from __future__ import annotations

import argparse
import os
import random
import time

import cometmp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("group")
    ap.add_argument("pattern")
    ap.add_argument("log")
    ap.add_argument("--work", type=float, default=0.0)
    ap.add_argument("--hold", action="store_true")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--shuffle", type=int, default=None)
    a = ap.parse_args()
    rng = random.Random(a.shuffle)
    fd = os.open(a.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def emit(*parts) -> None:
        os.write(fd, (" ".join(str(p) for p in parts) + "\n").encode())

    stop = a.log + ".stop"
    with cometmp.Client(a.root) as c:
        con = cometmp.Consumer(c, group=a.group)
        emit("R", time.monotonic())
        last = None
        while not os.path.exists(stop):
            b = con.read(a.pattern, max_messages=a.batch, timeout=0.05)
            now = time.monotonic()
            held = con.assigned() if hasattr(con, "assigned") else []
            if held != last:
                emit("S", now, ",".join(held) or "-")
                last = held
            if not len(b):
                continue
            os.write(fd, b"".join(b"D %r %s %d %d\n" % (now, m.id.stream.encode(), m.id.entry,
                                                        m.deliveries) for m in b))
            if a.hold:
                continue
            if a.work:
                time.sleep(a.work)   # the handler's work; a kill -9 here redelivers the batch
            if a.shuffle is not None:
                ms = list(b)
                rng.shuffle(ms)
                for m in ms:
                    con.ack(m)
                    os.write(fd, b"A %r %s %d\n" % (time.monotonic(), m.id.stream.encode(), m.id.entry))
                continue
            con.ack(b)
            t = time.monotonic()
            os.write(fd, b"".join(b"A %r %s %d\n" % (t, m.id.stream.encode(), m.id.entry)
                                  for m in b))
        con.close()
        emit("L", time.monotonic())


if __name__ == "__main__":
    main()
