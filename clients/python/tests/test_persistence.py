"""RedisStatePersistence and AsyncRedisStatePersistence against a real statecar and Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from statecar import (
    AsyncRedisStatePersistence,
    CompressionType,
    NotAStateKeyError,
    RedisStatePersistence,
    StateCorruptedError,
    StatecarConfigError,
    StatecarConnectionError,
    StatecarError,
    VersionConflictError,
    VersionInUseError,
    VersioningDisabledError,
    VersionNotFoundError,
)

SIGNATURE = b"\xe5SCK"


def agent_state(turns: int) -> dict:
    return {
        "user_id": "user_42",
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: tell me about order #{1000 + i} — état ✓"}
            for i in range(turns)
        ],
        "scratchpad": {"step": turns, "score": 0.5, "done": False, "notes": None},
    }


@pytest.fixture
def p(statecar_url):
    with RedisStatePersistence(redis_url=statecar_url) as p:
        yield p


def sid() -> str:
    return f"s-{uuid.uuid4().hex[:12]}"


def test_save_and_load_with_metadata(p, redis_direct):
    state = agent_state(30)
    state_id = sid()
    assert p.save_with_metadata(state, state_id, tags=["chat", "eu"]) is True
    loaded, md = p.load_with_metadata(state_id)
    assert loaded == state
    assert md.state_id == state_id
    assert md.version == 1 and md["version"] == 1
    assert md.tags == ["chat", "eu"]
    assert md.compression_type == "lz4"
    assert md.size_bytes == len(p._core.dumps(state))
    assert 0 < md.compressed_size < md.size_bytes
    assert md.compression_ratio > 1
    assert md.ttl is None
    assert md.created_at is not None and md.created_at > 1.6e9
    assert len(md.checksum) == 8
    # What Redis holds is statecar's envelope, smaller than the JSON.
    stored = redis_direct.get(f"state:{state_id}")
    assert stored.startswith(SIGNATURE) and len(stored) == md.compressed_size
    assert p.load_with_metadata("missing-" + state_id) == (None, None)


def test_versions_history_rollback_and_delete(p):
    state_id = sid()
    for i in range(1, 4):
        p.save_with_metadata({"step": i}, state_id, tags=[f"step{i}"])
    versions = p.list_versions(state_id)
    assert [v.version for v in versions] == [1, 2, 3]
    assert [v.current for v in versions] == [False, False, True]
    assert all(v.intact for v in versions)
    assert versions[0].tags == ["step1"]
    old, md = p.load_with_metadata(state_id, version=1)
    assert old == {"step": 1} and md.version == 1

    assert p.rollback(state_id, 1) == 4
    state, md = p.load_with_metadata(state_id)
    assert state == {"step": 1} and md.version == 4 and md.tags == ["step1"]

    assert p.delete_version(state_id, 2) is True
    assert p.delete_version(state_id, 2) is False
    assert [v.version for v in p.list_versions(state_id)] == [1, 3, 4]
    with pytest.raises(VersionInUseError, match="roll back to another version first"):
        p.delete_version(state_id, 4)
    with pytest.raises(VersionNotFoundError, match=f"no version 2 of state:{state_id}"):
        p.rollback(state_id, 2)

    assert p.delete_state(state_id) is True
    assert p.load_with_metadata(state_id) == (None, None)
    assert p.list_versions(state_id) == []
    assert p.delete_state(state_id) is False


def test_max_versions_bounds_the_history(p):
    state_id = sid()
    for i in range(15):
        p.save_with_metadata({"i": i}, state_id)
    assert [v.version for v in p.list_versions(state_id)] == list(range(6, 16))
    with pytest.raises(VersionNotFoundError):
        p.rollback(state_id, 5)


def test_optimistic_concurrency_with_version(p):
    state_id = sid()
    assert p.save_with_metadata({"a": 1}, state_id, version=1)
    assert p.save_with_metadata({"a": 2}, state_id, version=2)
    with pytest.raises(VersionConflictError) as e:
        p.save_with_metadata({"a": 3}, state_id, version=2)
    # statecar's own message, whole.
    assert str(e.value) == f"STATEVERSION stored version of state:{state_id} is 2, not 1"
    assert p.load_with_metadata(state_id)[0] == {"a": 2}
    with pytest.raises(StatecarError, match="VERSION must be a positive integer"):
        p.save_with_metadata({"a": 3}, state_id, version=0)


def test_list_states_and_stats(p):
    prefix = f"ls-{uuid.uuid4().hex[:8]}"
    ids = {f"{prefix}-{i}" for i in range(25)}
    for i in ids:
        p.save_with_metadata(agent_state(3), i)
    assert set(p.list_states(f"{prefix}-*")) == ids
    assert ids <= set(p.list_states())
    stats = p.get_stats()
    assert stats["total_states"] >= 25
    assert stats["compression_type"] == "lz4" and stats["versioning_enabled"] is True
    assert stats["max_versions"] == 10 and stats["default_ttl"] is None
    assert stats["redis_info"]["used_memory"] > 0
    assert "used_memory_human" in stats["redis_info"]
    assert stats["statecar"]["writes"] >= 25


def test_options_that_differ_from_statecars_rule_fail_loudly(statecar_url):
    with pytest.raises(StatecarConfigError) as e:
        RedisStatePersistence(redis_url=statecar_url, compression_type=CompressionType.ZLIB)
    msg = str(e.value)
    assert "compression_type=ZLIB" in msg and 'compression = "lz4"' in msg and "'state:*'" in msg
    with pytest.raises(StatecarConfigError, match="max_versions=5 but the rule says max_versions = 10"):
        RedisStatePersistence(redis_url=statecar_url, max_versions=5)
    with pytest.raises(StatecarConfigError, match="default_ttl=60 but the rule has no default_ttl_s"):
        RedisStatePersistence(redis_url=statecar_url, default_ttl=60)
    with pytest.raises(StatecarConfigError, match="enable_versioning=False"):
        RedisStatePersistence(redis_url=statecar_url, enable_versioning=False)
    with pytest.raises(StatecarConfigError, match="has no \\[\\[state\\]\\] rule for 'other:_'"):
        RedisStatePersistence(redis_url=statecar_url, key_prefix="other:")
    with pytest.raises(ValueError, match="compression_type 'brotli'"):
        RedisStatePersistence(redis_url=statecar_url, compression_type="brotli")
    # Matching options, given as the seed gives them, are accepted.
    RedisStatePersistence(
        redis_url=statecar_url,
        compression_type="LZ4",
        enable_versioning=True,
        max_versions=10,
        default_ttl=None,
        redis_options={"max_connections": 4, "socket_timeout": 5, "retry_on_timeout": True},
    ).close()


def test_plain_redis_and_unreachable_servers_are_named(servers):
    redis_port = servers[0].port
    with pytest.raises(StatecarConfigError, match="not statecar"):
        RedisStatePersistence(redis_url=f"redis://127.0.0.1:{redis_port}")
    with socket_port() as dead:
        with pytest.raises(StatecarConnectionError):
            RedisStatePersistence(redis_url=f"redis://127.0.0.1:{dead}", redis_options={"socket_connect_timeout": 2})


class socket_port:
    """A port nobody listens on (bound, not listening, for the duration)."""

    def __enter__(self) -> int:
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.s.close()


def test_rules_without_versions_and_with_a_default_ttl(statecar_with):
    url = statecar_with(
        """
[[state]]
pattern = "flat:*"
compression = "zstd"
versioning = false

[[state]]
pattern = "ttl:*"
compression = "zlib"
versioning = true
max_versions = 3
default_ttl_s = 120
"""
    )
    with RedisStatePersistence(url, CompressionType.ZSTD, enable_versioning=False, key_prefix="flat:") as flat:
        state_id = sid()
        assert flat.save_with_metadata(agent_state(5), state_id)
        state, md = flat.load_with_metadata(state_id)
        assert state == agent_state(5) and md.compression_type in ("zstd", "none")
        with pytest.raises(ValueError, match="need enable_versioning=True"):
            flat.save_with_metadata({}, state_id, tags=["x"])
        with pytest.raises(VersioningDisabledError, match="keeps no versions"):
            flat.list_versions(state_id)
    with RedisStatePersistence(url, "zlib", max_versions=3, default_ttl=120, key_prefix="ttl:") as ttl:
        state_id = sid()
        ttl.save_with_metadata({"x": 1}, state_id)
        _, md = ttl.load_with_metadata(state_id)
        assert 0 < md.ttl <= 120


def test_damaged_values_raise_and_are_never_returned(p, redis_direct):
    state_id = sid()
    p.save_with_metadata(agent_state(10), state_id)
    key = f"state:{state_id}"
    stored = redis_direct.get(key)
    redis_direct.setrange(key, len(stored) - 3, bytes([stored[-3] ^ 0xFF]))
    with pytest.raises(StateCorruptedError, match=f"state key '{key}' failed verification"):
        p.load_with_metadata(state_id)


def test_not_a_state_key_error_maps(statecar_url):
    r = redis.Redis.from_url(statecar_url)
    from statecar.errors import from_redis

    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("STATE.LOAD", "nothing:here")
    err = from_redis(e.value)
    assert isinstance(err, NotAStateKeyError) and "'nothing:here' is not a state key" in str(err)


@pytest.mark.parametrize("protocol", [2, 3])
def test_resp2_and_resp3_clients_get_the_same_results(statecar_url, protocol):
    with RedisStatePersistence(statecar_url, redis_options={"protocol": protocol}) as p3:
        state_id = sid()
        p3.save_with_metadata({"resp": 3}, state_id, tags=["r3"])
        p3.save_with_metadata({"resp": 33}, state_id)
        state, md = p3.load_with_metadata(state_id)
        assert state == {"resp": 33} and md.version == 2
        versions = p3.list_versions(state_id)
        assert [v.version for v in versions] == [1, 2] and versions[0].tags == ["r3"]
        assert p3.rollback(state_id, 1) == 3
        assert p3.delete_version(state_id, 2) is True
        assert state_id in p3.list_states("s-*")
        assert p3.get_stats()["redis_info"]["used_memory"] > 0
        with pytest.raises(VersionConflictError):
            p3.save_with_metadata({}, state_id, version=1)


def test_asyncio_twin(statecar_url):
    async def main():
        async with AsyncRedisStatePersistence(redis_url=statecar_url) as ap:
            state_id = sid()
            assert await ap.save_with_metadata(agent_state(4), state_id, version=1, tags=["a"])
            await ap.save_with_metadata(agent_state(5), state_id)
            state, md = await ap.load_with_metadata(state_id)
            assert state == agent_state(5) and md.version == 2
            assert [v.version for v in await ap.list_versions(state_id)] == [1, 2]
            assert await ap.rollback(state_id, 1) == 3
            assert await ap.delete_version(state_id, 2) is True
            assert state_id in await ap.list_states("s-*")
            assert (await ap.get_stats())["redis_info"]["used_memory"] > 0
            with pytest.raises(VersionConflictError):
                await ap.save_with_metadata({}, state_id, version=1)
            assert await ap.delete_state(state_id) is True
        bad = AsyncRedisStatePersistence(redis_url=statecar_url, max_versions=3)
        with pytest.raises(StatecarConfigError, match="max_versions=3"):
            await bad.load_with_metadata("x")
        await bad.close()

    asyncio.run(main())
