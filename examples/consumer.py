"""A consumer process reading what other processes append, at least once.

Run it next to any writer of the same directory, e.g.::

    python examples/consumer.py /tmp/cm-example &          # blocks, prints as entries arrive
    python -c "import cometmp; cometmp.Client('/tmp/cm-example').log('events:v1', shards=4).append(b'hi')"

Kill it (even with ``kill -9``) and start it again: it resumes after its group's last ack.
Run two copies (or ten): they are live members of the group and split the shards between
them; kill one and the others take its shards within a second and redeliver what it had
not acked (docs/ARCHITECTURE.md §9.7). ``--index 0 --count 2`` / ``--index 1 --count 2``
split them statically instead, without membership.
"""

from __future__ import annotations

import argparse
import signal
import threading

import cometmp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("--group", default="example-printer")
    ap.add_argument("--pattern", default="events:v1:shard:*")
    ap.add_argument("--index", type=int, default=None, help="static split (with --count)")
    ap.add_argument("--count", type=int, default=None)
    a = ap.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def handle(batch: cometmp.Batch) -> None:
        for msg in batch:                       # StreamMessage(id, data, timestamp_ns)
            print(f"{msg.id.stream} #{msg.id.entry}: {msg.data[:60]!r}", flush=True)

    def on_drop(stream: str, first: int, end: int) -> None:
        print(f"retention dropped {stream} [{first}, {end}) before we read it", flush=True)

    with cometmp.Client(a.directory) as client:
        consumer = cometmp.Consumer(client, group=a.group, on_drop=on_drop)
        static = (a.index, a.count) if a.count is not None else None
        try:
            consumer.process(handle, stream=a.pattern, batch_size=500,
                             assignment=static, stop=stop)
        except KeyboardInterrupt:
            pass
        print("held:", consumer.assigned(), "lag:", consumer.lag(a.pattern))
        consumer.close()                        # leaves: the others take its shards at once


if __name__ == "__main__":
    main()
