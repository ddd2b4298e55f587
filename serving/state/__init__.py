"""State stores, registered in one place. `open_store("memory")` or `open_store("redis://...")`."""

from __future__ import annotations

from moat.models.state import StateStore


def open_store(url: str, **options: object) -> StateStore:
    from moat.models.memory_store import MemoryStore

    if url == "memory":
        return MemoryStore(**options)  # type: ignore[arg-type]
    if url.startswith(("redis://", "rediss://", "unix://")):
        from moat.serving.state.redis_store import RedisStore

        return RedisStore(url, **options)  # type: ignore[arg-type]
    raise ValueError(f"MOAT_STATE: unknown store {url!r}; valid: memory, redis://HOST:PORT/DB")
