"""Call state shared between replicas through Redis (REDIS_URL), so Twilio's webhook, a call's media
stream and ElevenLabs' brain connection may each reach a different replica.

What lives in Redis (keys under `sb:`), and why:

- `sb:slots`, a sorted set of reservations (`r:<sid>`) and live calls (`l:<sid>`) scored by lease
  expiry: MAX_CONCURRENT_CALLS counts every replica's calls. A live call's lease is renewed while
  its stream lasts, so the slots of a replica that dies lapse within CALL_LEASE_SECONDS.
- `sb:call:<sid>` (holder replica, conversation id, caller, the transfer it came back from) and
  `sb:conv:<conversation id>`: the registry. The brain on any replica finds the call and which
  replica holds its stream.
- `sb:used:<sid>`: the call's tool allowance, claimed atomically (a Lua script), so two replicas
  can never both transfer one call.
- `sb:inbox:<replica>`, a stream: actions for calls a replica holds ("transfer once the line that
  began at <time> has been heard", "hang up after the goodbye"). The holder sees the marks, so it
  carries them out with the same timing as a call whose brain is local.
- `sb:outcome:<sid>`: how a stream ended, for the Connect action on whichever replica Twilio reaches.
- `sb:transfer:<sid>`: a transfer under way (who is calling and why, for the whisper; whether the
  person who answered pressed 1; its result, set once), for the whisper, the key pressed and the
  `<Dial action>`, each of which may reach any replica.
- `sb:replicas`: replicas taking new calls (heartbeat-scored), so a draining one can hand a webhook on.

Every script reads Redis's own clock, so replicas on different machines agree on expiry. If Redis
becomes unreachable, calls already up go on (the relay never waits on Redis), claims answer
"unavailable", and new calls are turned away until it answers again; renewals then put back what a
restarted Redis lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.calls.control import CallControl, EndReason, Outbound, Returned
from app.calls.outcomes import OUTCOME_TTL_S, StreamOutcomes
from app.calls.registry import (
    ActionTimings,
    CallAction,
    Claim,
    InProcessCallRegistry,
    Limits,
    Line,
    LiveCall,
)
from app.observability import one_line
from app.telephony.call_token import TTL_S
from app.telephony.transfers import TRANSFER_TTL_S, Choice, Transfer

log = logging.getLogger("switchboard.shared")

PREFIX = "sb:"
SLOTS = PREFIX + "slots"
REPLICAS = PREFIX + "replicas"
HEARTBEAT_S = 2.0
REPLICA_TTL_S = 3 * HEARTBEAT_S
COMMAND_TIMEOUT_S = 1.0
FIND_POLL_S = 0.05
INBOX_BLOCK_MS = 1000
INBOX_MAXLEN = 1000

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)"

# KEYS[1] slots; ARGV: sid, limit, reservation ms. 1 reserved (or already), 0 full. A live call is
# reserved a place for its next stream (back to the agent), whatever the count.
_RESERVE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], 'r:' .. ARGV[1]) then return 1 end
if not redis.call('ZSCORE', KEYS[1], 'l:' .. ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), 'r:' .. ARGV[1])
return 1
"""
)
# KEYS[1] slots; ARGV: sid, limit, lease ms. 1 live, 0 refused (already streaming, or full).
_CLAIM = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], 'l:' .. ARGV[1]) then return 0 end
if redis.call('ZREM', KEYS[1], 'r:' .. ARGV[1]) == 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), 'l:' .. ARGV[1])
return 1
"""
)
# KEYS[1] slots; ARGV: lease ms, sids... (re-added if a restarted Redis lost them)
_RENEW = (
    _NOW
    + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), 'l:' .. ARGV[i]) end
return #ARGV - 1
"""
)
# KEYS[1] the call's used hash; ARGV: tool, limit, ttl s, conflicting tools... 1 accepted, 0 limit, -1 conflict.
_USE = """
for i = 4, #ARGV do
  if tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') > 0 then return -1 end
end
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
# KEYS[1] a transfer's hash; ARGV: field, value. Sets it while the transfer is unsettled: 1 set, 0 not.
_UNSETTLED_SET = """
if redis.call('EXISTS', KEYS[1]) == 0 or (redis.call('HGET', KEYS[1], 'result') or '') ~= '' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
# KEYS[1] replicas; ARGV: this replica, ttl ms, taking calls (1/0). Returns the others taking calls.
_HEARTBEAT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
else redis.call('ZREM', KEYS[1], ARGV[1]) end
return redis.call('ZCARD', KEYS[1]) - (redis.call('ZSCORE', KEYS[1], ARGV[1]) and 1 or 0)
"""
)


class SharedState:
    """This replica's link to Redis: who it is, whether Redis answers, and who else takes calls."""

    def __init__(self, url: str) -> None:
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        options: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": COMMAND_TIMEOUT_S}
        self.redis = Redis.from_url(url, socket_timeout=COMMAND_TIMEOUT_S, **options)
        # Blocking reads of the inbox wait longer than any command may.
        self.blocking = Redis.from_url(url, socket_timeout=INBOX_BLOCK_MS / 1000 + COMMAND_TIMEOUT_S, **options)
        self.available = False
        self.error: str | None = "Redis not reached yet"
        self.taking_calls = True  # false while draining
        self.others_taking_calls = 0
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(self._beat_forever(), name="redis-heartbeat")

    async def beat(self) -> None:
        """Check Redis and say whether this replica takes calls; learn whether others do."""
        try:
            self.others_taking_calls = int(
                await self._heartbeat(
                    keys=[REPLICAS], args=[self.replica, int(REPLICA_TTL_S * 1000), int(self.taking_calls)]
                )
            )
        except (RedisError, OSError) as exc:
            if self.available or self.error is None:
                log.error("Redis unreachable: %s (new calls are turned away until it answers)", one_line(exc))
            self.available, self.error = False, f"Redis unreachable: {one_line(exc)}"
            return
        if not self.available:
            log.info("Redis reachable: shared call state available")
        self.available, self.error = True, None

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await self.beat()

    async def stop_taking_calls(self) -> None:
        self.taking_calls = False
        await self.beat()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.taking_calls = False
        with contextlib.suppress(RedisError, OSError):
            await self.redis.zrem(REPLICAS, self.replica)
        await self.redis.aclose()
        await self.blocking.aclose()


class SharedSlots:
    """MAX_CONCURRENT_CALLS across every replica, with leases on live calls."""

    def __init__(self, state: SharedState, limit: int, lease_s: float) -> None:
        self.state = state
        self.limit = limit
        self.lease_ms = int(lease_s * 1000)
        self.held: set[str] = set()  # live calls whose lease this replica renews
        self._reserve = state.redis.register_script(_RESERVE)
        self._claim = state.redis.register_script(_CLAIM)
        self._renew = state.redis.register_script(_RENEW)

    async def reserve(self, call_sid: str) -> bool:
        return bool(await self._reserve(keys=[SLOTS], args=[call_sid, self.limit, TTL_S * 1000]))

    async def claim(self, call_sid: str) -> bool:
        try:
            claimed = bool(await self._claim(keys=[SLOTS], args=[call_sid, self.limit, self.lease_ms]))
        except (RedisError, OSError):
            self.held.add(call_sid)  # the call goes on regardless; once Redis is back, renewal counts it
            raise
        if claimed:
            self.held.add(call_sid)
        return claimed

    async def release(self, call_sid: str) -> None:
        self.held.discard(call_sid)
        await self.state.redis.zrem(SLOTS, f"l:{call_sid}")

    async def renew(self) -> None:
        if self.held:
            await self._renew(keys=[SLOTS], args=[self.lease_ms, *self.held])


class SharedOutcomes(StreamOutcomes):
    """Kept here and in Redis: the Connect action may reach another replica."""

    def __init__(self, state: SharedState) -> None:
        super().__init__()
        self.state = state

    async def record(self, call_sid: str, reason: EndReason) -> None:
        await super().record(call_sid, reason)
        await self.state.redis.set(f"{PREFIX}outcome:{call_sid}", reason.value, ex=int(OUTCOME_TTL_S))

    async def get(self, call_sid: str) -> EndReason | None:
        local = await super().get(call_sid)
        if local is not None:
            return local
        stored = await self.state.redis.get(f"{PREFIX}outcome:{call_sid}")
        try:
            return EndReason(stored) if stored else None
        except ValueError:
            return None


class SharedTransfers:
    """Transfers under way, in Redis: the whisper, the key and the dial action may reach any replica."""

    def __init__(self, state: SharedState) -> None:
        self.redis = state.redis
        self._set = state.redis.register_script(_UNSETTLED_SET)

    @staticmethod
    def key_for(call_sid: str) -> str:
        return f"{PREFIX}transfer:{call_sid}"

    async def begin(self, transfer: Transfer) -> None:
        key = self.key_for(transfer.call_sid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=transfer.fields())
            pipe.expire(key, TRANSFER_TTL_S)
            await pipe.execute()

    async def get(self, call_sid: str) -> Transfer | None:
        fields = await self.redis.hgetall(self.key_for(call_sid))
        return Transfer.from_fields(fields) if fields else None

    async def choose(self, call_sid: str, choice: Choice) -> None:
        await self._set(keys=[self.key_for(call_sid)], args=["choice", choice])

    async def settle(self, call_sid: str, result: str) -> bool:
        return bool(await self._set(keys=[self.key_for(call_sid)], args=["result", result]))


class SharedLimits:
    """A call's tool allowance in Redis; `used` is what this replica has seen (claims are the gate)."""

    def __init__(self, state: SharedState, call_sid: str, limits: Mapping[str, int], ttl_s: int) -> None:
        self.state = state
        self.key = self.key_for(call_sid)
        self.limits = limits
        self.ttl_s = ttl_s
        self.seen: dict[str, int] = {}
        self._use = state.redis.register_script(_USE)

    @staticmethod
    def key_for(call_sid: str) -> str:
        return f"{PREFIX}used:{call_sid}"

    def used(self, tool: str) -> int:
        return self.seen.get(tool, 0)

    def saw(self, used: Mapping[str, str]) -> None:
        """What the call's hash in Redis held when the call was found."""
        self.seen = {tool: int(n) for tool, n in used.items()}

    async def claim(self, tool: str, conflicts: Sequence[str]) -> Claim:
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                done = int(
                    await self._use(keys=[self.key], args=[tool, self.limits.get(tool, 0), self.ttl_s, *conflicts])
                )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("tool %s not claimed: %s", tool, one_line(exc))
            return "unavailable"
        if done == 1:
            self.seen[tool] = self.seen.get(tool, 0) + 1
            return "accepted"
        return "conflict" if done == -1 else "limit"


class RemoteCall:
    """A live call whose media stream another replica holds: actions go to that replica's inbox."""

    def __init__(self, registry: SharedCallRegistry, call_sid: str, fields: Mapping[str, str], limits: SharedLimits):
        self._registry = registry
        self.call_sid = call_sid
        self.holder = fields.get("holder", "")
        self.caller = fields.get("caller", "")
        self._conversation_id = fields.get("conversation_id") or None
        self.returned = Returned.decode(fields.get("returned"))
        self.outbound = Outbound.decode(fields.get("outbound"))
        self.limits = limits
        self.ended = False

    @property
    def conversation_id(self) -> str | None:
        return self._conversation_id

    def line(self) -> Line:
        return Line(None)  # placed by its start time where the stream is

    def used(self, tool: str) -> int:
        return self.limits.used(tool)

    async def claim(self, tool: str, conflicts: Sequence[str] = ()) -> Claim:
        return await self.limits.claim(tool, conflicts)

    def after_line(self, action: CallAction, line: Line | None) -> None:
        self._registry.send_when_spoken(self, action, line)

    def end(self, reason: EndReason = EndReason.REQUESTED) -> None:
        self.after_line(CallAction("end"), None)


class SharedCallRegistry(InProcessCallRegistry):
    """The registry of one replica among several: local calls as before, plus Redis for the rest."""

    def __init__(
        self,
        state: SharedState,
        slots: SharedSlots,
        *,
        lease_s: float,
        max_call_seconds: float,
        limits: Mapping[str, int] | None = None,
        timings: ActionTimings | None = None,
    ) -> None:
        super().__init__(**({"limits": limits} if limits is not None else {}), timings=timings)
        self.state = state
        self.slots = slots
        self.lease_s = lease_s
        self.used_ttl_s = int(max_call_seconds + 3600)
        self._tasks: list[asyncio.Task[None]] = []
        self._reader: asyncio.Task[None] | None = None
        self._sends: set[asyncio.Task[None]] = set()
        self._closing = False

    def limits_for(self, call_sid: str) -> Limits:
        return SharedLimits(self.state, call_sid, self.limits, self.used_ttl_s)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read_inbox(), name="calls-inbox")
        self._tasks = [loop.create_task(self._renew_forever(), name="calls-renew"), self._reader]

    async def close(self) -> None:
        # A blocking read of the inbox does not always give way to cancellation inside the Redis
        # client, so the reader is woken by a note in its own inbox and left to stop by itself.
        self._closing = True
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                await self.state.redis.xadd(f"{PREFIX}inbox:{self.state.replica}", {"wake": "1"})
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=INBOX_BLOCK_MS / 1000 + COMMAND_TIMEOUT_S)
        for task in [*self._tasks, *self._sends]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._sends, return_exceptions=True)
        await super().close()

    # --- finding calls anywhere -----------------------------------------------------------------

    async def find(
        self, *, call_sid: str | None = None, conversation_id: str | None = None, timeout: float = 0.0
    ) -> LiveCall | None:
        """Here first, then in Redis; while waiting, a call announced here is noticed at once (the
        in-process waiters) and Redis is asked again every FIND_POLL_S."""
        if not call_sid and not conversation_id:
            return None
        deadline = time.monotonic() + timeout
        while True:
            local = self.lookup(call_sid=call_sid, conversation_id=conversation_id)
            if local is not None:
                return local
            try:
                remote = await self._remote(call_sid, conversation_id)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("call not found: Redis unreachable (%s)", one_line(exc))
                return None
            if remote is not None:
                return remote
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            local = await super().find(
                call_sid=call_sid, conversation_id=conversation_id, timeout=min(FIND_POLL_S, remaining)
            )
            if local is not None:
                return local

    async def _remote(self, call_sid: str | None, conversation_id: str | None) -> LiveCall | None:
        redis = self.state.redis
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            sid = call_sid or (await redis.get(f"{PREFIX}conv:{conversation_id}") if conversation_id else None)
            if not sid:
                return None
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(f"{PREFIX}call:{sid}")
                pipe.hgetall(SharedLimits.key_for(sid))
                fields, used = await pipe.execute()
        if not fields or fields.get("holder") == self.state.replica:
            return None  # not live anywhere, or ours and not announced yet: the local lookup finds it
        limits = SharedLimits(self.state, sid, self.limits, self.used_ttl_s)
        limits.saw(used)
        return RemoteCall(self, sid, fields, limits)

    # --- announcing the calls this replica holds ------------------------------------------------

    async def call_started(self, call: CallControl) -> None:
        await super().call_started(call)
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                await self._announce([call])

    async def call_ended(self, call: CallControl) -> None:
        await super().call_ended(call)
        keys = [f"{PREFIX}call:{call.call_sid}"]
        if call.conversation_id:
            keys.append(f"{PREFIX}conv:{call.conversation_id}")
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                await self.state.redis.delete(*keys)

    async def _announce(self, calls: Sequence[CallControl]) -> None:
        ttl = int(self.lease_s)
        async with self.state.redis.pipeline(transaction=False) as pipe:
            for call in calls:
                key = f"{PREFIX}call:{call.call_sid}"
                fields = {"holder": self.state.replica, "caller": call.caller}
                if call.returned is not None:
                    fields["returned"] = call.returned.encode()
                if call.outbound is not None:
                    fields["outbound"] = call.outbound.encode()
                if call.conversation_id:
                    fields["conversation_id"] = call.conversation_id
                    pipe.set(f"{PREFIX}conv:{call.conversation_id}", call.call_sid, ex=ttl)
                pipe.hset(key, mapping=fields)
                pipe.expire(key, ttl)
            await pipe.execute()

    async def _renew_forever(self) -> None:
        """Leases and registry entries of this replica's calls, re-asserted well before they lapse."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT_S * 2):
                    await self.slots.renew()
                    calls = [live.control for live in self.calls]
                    if calls:
                        await self._announce(calls)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("call leases not renewed: %s", one_line(exc))

    # --- actions for calls held elsewhere -------------------------------------------------------

    def send_when_spoken(self, call: RemoteCall, action: CallAction, line: Line | None) -> None:
        task = asyncio.get_running_loop().create_task(self._send(call, action, line), name=f"send-{call.call_sid}")
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, call: RemoteCall, action: CallAction, line: Line | None) -> None:
        if line is not None:
            # The line is over once its turn's text has all gone out; the holder waits for the audio.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timings.turn_timeout):
                    await line.spoken.wait()
        fields = {"call_sid": call.call_sid, "action": action.to_json()}
        if line is not None:
            fields["at"] = repr(line.at)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                await self.state.redis.xadd(
                    f"{PREFIX}inbox:{call.holder}", fields, maxlen=INBOX_MAXLEN, approximate=True
                )
        except (RedisError, OSError, TimeoutError) as exc:
            log.error("%s not handed to the replica holding the call: %s", action.kind, one_line(exc))

    async def _read_inbox(self) -> None:
        inbox = f"{PREFIX}inbox:{self.state.replica}"
        last = "$"
        while not self._closing:
            try:
                read = await self.state.blocking.xread({inbox: last}, block=INBOX_BLOCK_MS, count=100)
            except (RedisError, OSError) as exc:
                log.debug("inbox not read: %s", one_line(exc))
                await asyncio.sleep(INBOX_BLOCK_MS / 1000)
                continue
            for _stream, entries in read or []:
                for entry_id, fields in entries:
                    last = entry_id
                    self._act(fields)

    def _act(self, fields: Mapping[str, str]) -> None:
        if "wake" in fields:
            return  # closing: the read is over
        local = self.get(fields.get("call_sid", ""))
        action = CallAction.from_json(fields.get("action", ""))
        if local is None or action is None:
            log.info("action for a call not held here dropped", extra={"call_sid": fields.get("call_sid")})
            return
        line = None
        if "at" in fields:
            with contextlib.suppress(ValueError):
                line = Line(None, at=float(fields["at"]))
                line.spoken.set()
        local.after_line(action, line)
