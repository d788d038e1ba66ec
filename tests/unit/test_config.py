"""cometmp.Config: defaults need no arguments, every bad value is refused naming its field,
and the storage knobs that change the write path still round-trip entries."""

from __future__ import annotations

import pytest

import cometmp


def test_default_config_is_valid_and_documented_defaults_hold():
    cfg = cometmp.Config().validate()
    assert cfg.storage.durability == "none"
    assert cfg.storage.segment_bytes <= 64 * 1024 * 1024
    assert cfg.storage.max_entry_bytes >= 16 * 1024 * 1024
    assert cfg.compression.min_bytes == 4096
    assert cfg.storage.prefault is True


@pytest.mark.parametrize("section, field, value", [
    ("storage", "segment_bytes", 1000),
    ("storage", "durability", "sometimes"),
    ("storage", "prefault", "yes"),
    ("storage", "max_entry_bytes", 0),
    ("compression", "min_bytes", -1),
    ("indexing", "interval_bytes", 10),
    ("retention", "max_age", -5.0),
    ("retention", "max_total_bytes", 1.5),
])
def test_a_bad_value_is_refused_naming_its_field(tmp_path, section, field, value):
    cfg = cometmp.Config()
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ValueError, match=f"{section}.{field}"):
        cometmp.Client(str(tmp_path / "d"), config=cfg)


@pytest.mark.parametrize("prefault", [True, False])
@pytest.mark.parametrize("durability", ["none", "interval", "always"])
def test_entries_round_trip_with_and_without_the_prefault_thread(tmp_path, prefault, durability):
    cfg = cometmp.Config()
    cfg.storage.segment_bytes = 1024 * 1024
    cfg.storage.prefault = prefault
    cfg.storage.durability = durability
    payloads = [bytes([i % 251]) * (i * 37 % 5000) for i in range(400)]
    with cometmp.Client(str(tmp_path / "d"), config=cfg) as c:
        lg = c.log("p", shards=1)
        ids = [lg.append(p) for p in payloads[:200]] + list(lg.append_many(payloads[200:]))
    with cometmp.Client(str(tmp_path / "d"), readonly=True) as c:
        assert [c.read(i.stream, i.entry).data for i in ids] == payloads
