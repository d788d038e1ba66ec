"""Bit rot in the *last* published record is corruption, not a torn tail: the record was
acknowledged, so its entry number is never handed out again (I1) and the damage stays
reported (found by trying the project as a new user)."""

from __future__ import annotations

import os

import pytest

import cometmp
from cometmp import format as fmt
from cometmp.tools.verify import recover_directory, verify_directory

from conftest import small_config


@pytest.mark.parametrize("flip_at", [0, 3, 9, 17, 24])
def test_a_damaged_last_record_keeps_its_number_and_stays_reported(tmp_path, flip_at):
    root = str(tmp_path / "log")
    with cometmp.Client(root, small_config()) as c:
        c.append("audit", [b"first-record", b"second-record"])
    seg = os.path.join(root, "streams", "audit", "00000000000000000000.seg")
    off = fmt.CM_SEG_HEADER_BYTES + fmt.CM_REC_HEADER_BYTES + len(b"first-record") + flip_at
    with open(seg, "r+b") as f:
        f.seek(off)
        b = f.read(1)
        f.seek(off)
        f.write(bytes([b[0] ^ 0x5A]))
    rep = recover_directory(root)          # opens a writer: recovery must not "repair" it away
    assert not rep.to_dict()["ok"]
    with cometmp.Client(root, small_config()) as c:
        (mid,) = c.append("audit", [b"third-record"])
        assert mid.entry == 2, "the damaged entry's number was reused"
        assert c.length("audit") == 3
        with pytest.raises(cometmp.CorruptRecord):
            c.read("audit", 1)
        assert [m.data for m in c.scan("audit")] == [b"first-record", b"third-record"]
    assert not verify_directory(root).ok
