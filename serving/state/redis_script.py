"""The one server-side script behind every Redis state call, and how it is sent.

One call records a request in its sketches, reads its scopes' holds and, per scope, compares
the stored version with the one the client computed on: equal, it writes the client's slots
(compare-and-set); different, it answers the stored value instead so the client can recompute
on it. A sketch count other than the one the
client computed with blocks every write of the call (the rows carry the counts), and answers the
true count. Nothing else can run between the compare and the write: Redis runs a script whole.

A sketch item is a sorted set of keyed account ids scored by their latest 10-minute bucket,
the memory store's exact sketch: ZADD; when that changed the item, drop the accounts out of the
hour and push the TTL on (a call that changes nothing has nothing new to drop: the call that
put this account at this bucket dropped up to it); count, capped at the most recent `cap`.

Arguments are packed (Lua's struct), since a client pays per argument. KEYS: per scope its state
and hold key, then per sketch its item key. ARGV[1]: scopes, sketches, state TTL (ms), sketch
TTL (s), buckets in the hour, accounts per item. ARGV[2]: per sketch the member (12 bytes), its
bucket and the expected count (-1 expects nothing). ARGV[3...]: per scope the expected version
(length-prefixed; empty for no value), a mode ('p' patch, 's' replace the value, 'r' only read
it), the number of writes, then each write's offset and length-prefixed bytes. Reply: the sketch
counts, then per scope its hold value and either 1 (written), 0 (current, but a count differed)
or the stored value (nil for none).

On one Redis a request is one call. On a cluster every key of a scope (or of a sketch item)
shares a hash tag, so each call stays in one slot; a request's calls go out together, one
exchange per node touched.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import RedisCluster

SCRIPT = """
local n, m, ttl, sketch_ttl, hour, cap = struct.unpack('<I2I2I8I4I2I4', ARGV[1])
local out, fits, at = {}, true, 1
for j = 0, m - 1 do
  local key = KEYS[2 * n + j + 1]
  local member, bucket, expected
  member, bucket, expected, at = struct.unpack('c12<I4<i4', ARGV[2], at)
  if redis.call('ZADD', key, 'CH', bucket, member) == 1 then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', bucket - hour)
    redis.call('EXPIRE', key, sketch_ttl)
  end
  local c = redis.call('ZCARD', key)
  if c > cap then
    redis.call('ZREMRANGEBYRANK', key, 0, c - cap - 1)
    c = cap
  end
  if expected >= 0 and expected ~= c then fits = false end
  out[#out + 1] = c
end
for i = 0, n - 1 do
  local key, blob = KEYS[2 * i + 1], ARGV[3 + i]
  local version, mode, w, p = struct.unpack('Bc0c1B', blob)
  out[#out + 1] = redis.call('GET', KEYS[2 * i + 2])
  local v = redis.pcall('GETRANGE', key, 0, 11)
  if type(v) == 'table' then
    -- not a string: nothing this layout wrote, and nothing to keep
    redis.call('DEL', key)
    v = ''
  end
  if mode ~= 'r' and v == version then
    if fits then
      for k = 1, w do
        local offset, bytes
        offset, bytes, p = struct.unpack('<I4I4c0', blob, p)
        if k == 1 and mode == 's' then
          redis.call('SET', key, bytes)
        else
          redis.call('SETRANGE', key, offset, bytes)
        end
      end
      if w > 0 then redis.call('PEXPIRE', key, ttl) end
      out[#out + 1] = 1
    else
      out[#out + 1] = 0
    end
  else
    out[#out + 1] = redis.call('GET', key)
  end
end
return out
"""
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
WRITTEN, CURRENT = 1, 0
PATCH, REPLACE, READ = "p", "s", "r"
_GLOBALS = struct.Struct("<HHQIHI")
_SKETCH = struct.Struct("<Ii")  # after the 12-byte member
_WRITE = struct.Struct("<II")  # offset, length


@dataclass
class Call:
    """One script call: its keys and arguments, built scope by scope and sketch by sketch."""

    state_ttl_ms: int
    sketch_ttl_s: int
    hour_buckets: int
    max_accounts: int
    scopes: list[tuple[str, str, bytes, str, list[tuple[int, bytes]]]] = field(default_factory=list)  # state key, hold key, version, mode, writes
    sketches: list[tuple[str, bytes, int, int | None]] = field(default_factory=list)  # item key, member, bucket, expected count

    def command(self) -> tuple[list[Any], list[Any]]:
        keys: list[Any] = [k for state, hold, *_ in self.scopes for k in (state, hold)] + [item for item, *_ in self.sketches]
        args: list[Any] = [
            _GLOBALS.pack(len(self.scopes), len(self.sketches), self.state_ttl_ms, self.sketch_ttl_s, self.hour_buckets, self.max_accounts),
            b"".join(member + _SKETCH.pack(bucket, -1 if expected is None else expected) for _, member, bucket, expected in self.sketches),
        ]
        for _, _, version, mode, writes in self.scopes:
            parts = [bytes((len(version),)), version, mode.encode(), bytes((len(writes),))]
            for offset, data in writes:
                parts += [_WRITE.pack(offset, len(data)), data]
            args.append(b"".join(parts))
        return keys, args


@dataclass(frozen=True)
class Reply:
    counts: list[int]
    holds: list[bytes | None]
    outcomes: list[int | bytes | None]  # per scope: WRITTEN, CURRENT, or the stored value


def parse(call: Call, raw: list[Any]) -> Reply:
    m = len(call.sketches)
    rest = raw[m:]
    return Reply([int(c) for c in raw[:m]], rest[0::2], rest[1::2])


class Runner:
    """Sends calls: EVALSHA (EVAL once when the server does not know the script). Counts the
    exchanges it makes (`round_trips`) and the script calls (`calls`)."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.round_trips = 0
        self.calls = 0

    def run(self, calls: list[Call]) -> list[Reply]:
        self.round_trips += 1
        self.calls += len(calls)
        commands = [c.command() for c in calls]
        if not self.cluster and len(calls) == 1:
            keys, args = commands[0]
            try:
                raw = self.client.evalsha(SHA, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                raw = self.client.eval(SCRIPT, len(keys), *keys, *args)  # and the server keeps it
            return [parse(calls[0], raw)]
        return [parse(c, raw) for c, raw in zip(calls, self._pipelined(commands), strict=True)]

    def _pipelined(self, commands: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        """All calls at once (a cluster pipeline writes to every node before reading any). A node
        that lost the script gets it and only its calls are sent again: the others have run, and
        running a compare-and-set twice would append twice."""
        out: list[Any] = [None] * len(commands)
        pending = list(range(len(commands)))
        for _ in range(2):
            pipe = self.client.pipeline(transaction=False) if not self.cluster else self.client.pipeline()
            for i in pending:
                keys, args = commands[i]
                # The node from the client's slot map: left to itself, a cluster pipeline asks the
                # server for a script's keys (COMMAND GETKEYS), one more exchange per call.
                route = {"target_nodes": self.client.get_node_from_key(keys[0])} if self.cluster else {}
                pipe.execute_command("EVALSHA", SHA, len(keys), *keys, *args, **route)
            again = []
            for i, raw in zip(pending, pipe.execute(raise_on_error=False), strict=True):
                if isinstance(raw, redis.exceptions.NoScriptError):
                    again.append(i)
                elif isinstance(raw, Exception):
                    raise raw
                else:
                    out[i] = raw
            if not again:
                return out
            self.round_trips += 1
            self.client.script_load(SCRIPT)  # on every primary of a cluster
            pending = again
        raise redis.exceptions.NoScriptError("the state script could not be loaded")
