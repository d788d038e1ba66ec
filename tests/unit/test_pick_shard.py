"""pick_shard is murmur3 x86_32 (seed 0) modulo the shard count, frozen for all versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import cometmp

from conftest import child_env

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "pick_shard_v1.json")


def murmur3_x86_32(data: bytes, seed: int = 0) -> int:
    """Reference MurmurHash3_x86_32, written from the published algorithm (not mmh3)."""
    c1, c2, m32 = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    rotl = lambda x, r: ((x << r) | (x >> (32 - r))) & m32  # noqa: E731
    h = seed & m32
    n = len(data) // 4 * 4
    for i in range(0, n, 4):
        k = rotl((int.from_bytes(data[i:i + 4], "little") * c1) & m32, 15) * c2 & m32
        h = (rotl(h ^ k, 13) * 5 + 0xE6546B64) & m32
    k = 0
    for j, b in enumerate(data[n:]):
        k |= b << (8 * j)
    if len(data) - n:
        h ^= rotl((k * c1) & m32, 15) * c2 & m32
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & m32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & m32
    return h ^ (h >> 16)


def golden_cases():
    with open(GOLDEN) as f:
        doc = json.load(f)
    for case in doc["cases"]:
        key = case["key"] if "key" in case else bytes.fromhex(case["key_hex"])
        yield key, case["hash"], {int(n): v for n, v in case["shards"].items()}


def test_reference_hash_matches_published_vectors():
    assert murmur3_x86_32(b"") == 0
    assert murmur3_x86_32(b"hello") == 0x248BFA47
    assert murmur3_x86_32(b"The quick brown fox jumps over the lazy dog") == 0x2E4FF723


def test_golden_file_is_murmur3_of_the_utf8_key():
    cases = list(golden_cases())
    assert len(cases) >= 15
    for key, h, shards in cases:
        raw = key.encode() if isinstance(key, str) else key
        assert murmur3_x86_32(raw) == h
        for n, v in shards.items():
            assert v == h % n


def test_pick_shard_returns_the_golden_values():
    for key, _h, shards in golden_cases():
        for n, v in shards.items():
            assert cometmp.pick_shard(key, n) == v, (key, n)
            if isinstance(key, bytes):
                assert cometmp.pick_shard(bytearray(key), n) == v
                assert cometmp.pick_shard(memoryview(key), n) == v


def test_pick_shard_is_the_same_in_another_process():
    keys = [k for k, _h, _s in golden_cases() if isinstance(k, str)]
    code = ("import json, sys, cometmp; keys = json.loads(sys.stdin.read());"
            "print(json.dumps([cometmp.pick_shard(k, 16) for k in keys]))")
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(keys), env=child_env(),
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out) == [cometmp.pick_shard(k, 16) for k in keys]


def test_pick_shard_stream_names_the_shard_stream(tmp_path):
    with cometmp.Client(str(tmp_path / "d")) as c:
        for key, _h, shards in golden_cases():
            assert c.pick_shard_stream("events:v1", key, 16) == f"events:v1:shard:{shards[16]:04d}"


def test_keyed_append_lands_in_the_picked_shard(tmp_path):
    with cometmp.Client(str(tmp_path / "d")) as c:
        lg = c.log("keyed", shards=7)
        for key, _h, shards in golden_cases():
            mid = lg.append(b"v", key=key)
            assert mid.shard == shards[7] and mid.stream == f"keyed:shard:{shards[7]:04d}"
            ids = lg.append_many([b"a", b"b"], key=key)
            assert ids.shard == shards[7]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None, "4"])
def test_pick_shard_rejects_bad_shard_counts(bad):
    with pytest.raises(ValueError):
        cometmp.pick_shard("k", bad)


@pytest.mark.parametrize("bad", [None, 12, 1.0, ["k"]])
def test_pick_shard_rejects_non_str_non_bytes_keys(bad):
    with pytest.raises(TypeError):
        cometmp.pick_shard(bad, 4)


def _random_keys(rng, count):
    """str keys (ASCII, Latin-1, CJK, astral) and bytes keys of lengths 0..64."""
    alphabets = ["abcdefghijklmnopqrstuvwxyz0123456789:-_", "äöüßéèçñ", "日本語中文한국어",
                 "\U0001F600\U0001F680\U00010348"]
    for i in range(count):
        n = rng.randrange(65)
        if i % 2:
            yield rng.randbytes(n)
        else:
            chars = "".join(alphabets[:1 + i % 4])
            yield "".join(rng.choice(chars) for _ in range(n))


def test_c_murmur3_matches_the_mmh3_package_on_random_keys():
    import random

    import mmh3

    from cometmp._appender import murmur3_x86_32 as c_murmur3

    seed = random.randrange(1 << 32)
    print(f"random seed {seed}")  # rerun a failure with this seed
    rng = random.Random(seed)
    for key in _random_keys(rng, 20000):
        raw = key.encode("utf-8") if isinstance(key, str) else key
        want = mmh3.hash(raw, 0, signed=False)
        assert c_murmur3(key) == want, (seed, key)
        hseed = rng.randrange(1 << 32)
        assert c_murmur3(raw, hseed) == mmh3.hash(raw, hseed, signed=False), (seed, raw, hseed)
        n = rng.choice([1, 2, 3, 7, 16, 100, 1024, 65536, rng.randrange(1, 1 << 40)])
        assert cometmp.pick_shard(key, n) == want % n, (seed, key, n)


def test_keyed_appends_route_in_c_like_pick_shard(tmp_path):
    import random

    seed = random.randrange(1 << 32)
    print(f"random seed {seed}")
    rng = random.Random(seed)
    with cometmp.Client(str(tmp_path / "d")) as c:
        lg = c.log("keyed", shards=13)
        for key in _random_keys(rng, 2000):
            assert lg.append(b"v", key=key).shard == cometmp.pick_shard(key, 13), (seed, key)
        assert lg.append(b"v", key=bytearray(b"k")).shard == cometmp.pick_shard(b"k", 13)
        assert lg.append(b"v", key=memoryview(b"kxkx")[::2]).shard == cometmp.pick_shard(b"kk", 13)


def test_a_lone_surrogate_key_is_refused_like_str_encode(tmp_path):
    with pytest.raises(UnicodeEncodeError):
        cometmp.pick_shard("a\udc80", 4)
    with cometmp.Client(str(tmp_path / "d")) as c:
        lg = c.log("keyed", shards=4)
        with pytest.raises(UnicodeEncodeError):
            lg.append(b"v", key="a\udc80")
        with pytest.raises(TypeError):
            lg.append(b"v", key=12)
        assert c.length("keyed:shard:0000") + c.length("keyed:shard:0003") == 0
