"""The consumer's read/ack path makes no per-call getpid(): fork detection uses the core's
fork generation (I10, native/error.c), counted here with the real strace on a real log.
Skipped where strace is missing or ptrace is not allowed."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import os, sys, cometmp
    root, n = sys.argv[1], int(sys.argv[2])
    with cometmp.Client(root) as c:
        log = c.log("s", shards=1)
        for i in range(n):
            log.append(b"e%d" % i)
        con = cometmp.Consumer(c, group="g")
        got = 0
        mark = os.open(os.devnull, os.O_WRONLY)
        os.write(mark, b"BEGIN")
        while got < n:
            b = con.read("s:*", max_messages=1, timeout=0)
            got += len(b)
            con.ack(b)
        os.write(mark, b"END")
        con.close()
""")


def test_reads_and_acks_make_no_getpid_syscall_each(tmp_path):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("no strace")
    n = 200
    script = tmp_path / "reader.py"
    script.write_text(SCRIPT)
    out = tmp_path / "trace"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    r = subprocess.run([strace, "-f", "-qq", "-e", "trace=getpid,write", "-o", str(out),
                        sys.executable, str(script), str(tmp_path / "data"), str(n)],
                       capture_output=True, text=True, timeout=120, env=env)
    if r.returncode != 0 and "ptrace" in r.stderr.lower():
        pytest.skip(f"strace not permitted: {r.stderr.strip()[:200]}")
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if '"BEGIN"' in line)
    end = next(i for i, line in enumerate(lines) if '"END"' in line)
    getpids = sum("getpid(" in line for line in lines[begin:end])
    # n reads and n acks: one getpid each before (2n); none needed now
    assert getpids < n // 10, f"{getpids} getpid() calls for {n} reads and acks"
