"""State stores, registered in one place. `open_store("memory")` or `open_store("redis://...")`."""

from __future__ import annotations

from models.state import StateStore


def open_store(url: str, **options: object) -> StateStore:
    from serving.state.memory import MemoryStore

    if url == "memory":
        return MemoryStore(**options)  # type: ignore[arg-type]
    if url.startswith(("redis://", "rediss://", "unix://")):
        from serving.state.redis_store import RedisStore

        return RedisStore(url, **options)  # type: ignore[arg-type]
    raise ValueError(f"MOAT_STATE: unknown store {url!r}; valid: memory, redis://HOST:PORT/DB")
