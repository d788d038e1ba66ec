"""A writer for the rotation-fault tests, on the failpoint build of the core.

    python rotation_fault_writer.py SO ROOT SPEC DURABILITY SEED OUT [PATH]

Loads the failpoint core SO as cometmp._cffi (tests/failpoints.py), opens ROOT with 1 MiB
segments, sets COMETMP_FAILPOINT=SPEC and appends entries of 18-90 KiB (singles and
append_many batches; after a failure three of at most 500 bytes, which still fit the older
segment) so that rotations keep happening while some of them fail. It checks,
in process, that every error is the cometmp one for the injected errno (DiskFull for
ENOSPC/EDQUOT, StorageError otherwise), that every acknowledged entry reads back with its
bytes right away and that no entry number is handed out twice. Then it clears the
failpoint, appends 10 more (all must succeed) and writes OUT: JSON with the acknowledged
entries {entry: [size, sha256]}, the errors seen and the stream's counters. Exits non-zero
on a failed check.

PATH picks the rotation path the faults hit (ARCHITECTURE.md §4.1): "spare" (the default)
waits, before each append, until the spare its prefault thread is building is ready, so
every rotation that has one takes it; "sync" also fails `rotate.spare` on every rotation,
so every rotation creates its files itself.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import sys
import time

tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, tests)
import failpoints  # noqa: E402

so, root, spec, durability, seed, out = sys.argv[1:7]
path = sys.argv[7] if len(sys.argv) > 7 else "spare"
#: points that only take the spare away, never fail an append: kept to the end
NEVER_AN_ERROR = failpoints.SPARE_POINTS
if path == "sync":
    spec = "rotate.spare:1:EIO:1000000000," + spec
failpoints.bootstrap(so)

import cometmp  # noqa: E402

STREAM = "rot:shard:0000"
ERRNO = {"ENOSPC": errno.ENOSPC, "EDQUOT": errno.EDQUOT, "EIO": errno.EIO}


def digest(b: bytes) -> list:
    return [len(b), hashlib.sha256(b).hexdigest()]


def main() -> int:
    rng = random.Random(int(seed))
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 1024 * 1024
    cfg.storage.preallocate_bytes = 64 * 1024
    cfg.storage.durability = durability
    injected = {ERRNO[part.split(":")[2]] for part in spec.split(",") if part.split(":")[2] in ERRNO}
    acked: dict[int, list] = {}
    errors: list[str] = []
    with cometmp.Client(root, config=cfg) as c:
        lg = c.log("rot", shards=1)
        os.environ["COMETMP_FAILPOINT"] = spec
        small = 0
        for i in range(140):
            if i == 110:   # space returns: all must succeed now (on the same path)
                kept = [p for p in spec.split(",") if p.split(":")[0] in NEVER_AN_ERROR]
                if kept:
                    os.environ["COMETMP_FAILPOINT"] = ",".join(kept)
                else:
                    os.environ.pop("COMETMP_FAILPOINT")
            # after a failure, small entries that still fit the older segment (the attack)
            hi = 500 if small else 90_000
            small = max(0, small - 1)
            batch = [rng.randbytes(rng.randint(hi // 5, hi))
                     for _ in range(rng.randint(2, 5) if rng.random() < 0.25 else 1)]
            before = c.length(STREAM)
            if path == "spare":
                wait_for_spare(c._writer(STREAM))
            try:
                if len(batch) == 1:
                    entries = [lg.append(batch[0]).entry]
                else:
                    entries = [m.entry for m in lg.append_many(batch)]
            except (cometmp.DiskFull, cometmp.StorageError) as e:
                if i >= 110:
                    print(f"append {i} failed after the failpoint was cleared: {e!r}")
                    return 1
                want = cometmp.DiskFull if e.errno in (errno.ENOSPC, errno.EDQUOT) else cometmp.StorageError
                if e.errno not in injected or type(e) is not want:
                    print(f"append {i}: {type(e).__name__} errno {e.errno}, injected {injected}: {e}")
                    return 1
                errors.append(f"{i}:{type(e).__name__}:{e}")
                small = 3
                entries = list(range(before, before + e.appended))
                batch = batch[:e.appended]
                if c.length(STREAM) != before + e.appended:
                    print(f"append {i}: length {c.length(STREAM)} after a failure that wrote "
                          f"{e.appended} of {len(batch)} at {before}")
                    return 1
            for entry, data in zip(entries, batch):
                if entry in acked:
                    print(f"append {i}: entry {entry} handed out twice")
                    return 1
                acked[entry] = digest(data)
                got = c.read(STREAM, entry).data       # CorruptRecord here is the old bug
                if got != data:
                    print(f"append {i}: entry {entry} reads back other bytes")
                    return 1
        counters = c.stats()["streams"][STREAM]["counters"]
    with open(out, "w") as f:
        json.dump({"acked": acked, "errors": errors, "counters": counters}, f)
    return 0


def wait_for_spare(writer) -> None:
    """Until the spare the prefault thread is building for this stream is built (a
    condition, polled: the thread works off this process's append path)."""
    deadline = time.monotonic() + 60
    while writer.spare() == "building":
        if time.monotonic() > deadline:
            raise SystemExit("the spare was still being built after 60 s")
        time.sleep(0.0005)


if __name__ == "__main__":
    sys.exit(main())
