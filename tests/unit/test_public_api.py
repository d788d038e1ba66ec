"""The public surface: cometmp.__all__ is sorted and exactly the public names."""

from __future__ import annotations

import types

import cometmp


def test_all_is_sorted_and_unique():
    assert list(cometmp.__all__) == sorted(cometmp.__all__)
    assert len(set(cometmp.__all__)) == len(cometmp.__all__)


def test_all_is_exactly_the_public_names():
    public = {n for n, v in vars(cometmp).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public == set(cometmp.__all__)


def test_contract_names_from_issue_2_are_exported():
    contract = {"Client", "Config", "MessageID", "StreamMessage", "pick_shard", "CometError",
                "CorruptRecord", "EntryNotFound", "DiskFull", "BadStreamName", "EntryTooLarge",
                "ShardCountMismatch"}
    assert contract <= set(cometmp.__all__)


def test_exception_tree_is_rooted_at_comet_error_with_natural_builtins():
    for name in cometmp.__all__:
        obj = getattr(cometmp, name)
        if isinstance(obj, type) and issubclass(obj, Warning):
            assert issubclass(obj, cometmp.CometWarning), name
        elif isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, cometmp.CometError), name
    assert issubclass(cometmp.BadStreamName, ValueError)
    assert issubclass(cometmp.ShardCountMismatch, ValueError)
    assert issubclass(cometmp.EntryTooLarge, ValueError)
    assert issubclass(cometmp.EntryNotFound, KeyError)
    assert issubclass(cometmp.DiskFull, cometmp.StorageError)
    assert issubclass(cometmp.ConfigError, ValueError)


def test_no_cometmp_error_is_an_os_error_so_servers_report_it_as_an_application_error():
    """gunicorn treats an OSError from the app as a socket error (dropped connection)."""
    for name in cometmp.__all__:
        obj = getattr(cometmp, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert not issubclass(obj, OSError), name


def test_config_has_the_documented_fields_and_defaults():
    c = cometmp.Config()
    assert c.storage.durability == "none"
    assert 1 << 20 <= c.storage.segment_bytes <= 64 << 20
    assert c.storage.max_entry_bytes >= 16 << 20
    assert c.compression.min_bytes == 4096
    for f in ("max_age", "max_shard_bytes", "max_total_bytes"):
        assert getattr(c.retention, f) == 0
    assert c.validate() is c
