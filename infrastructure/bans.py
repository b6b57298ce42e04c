"""Brute-force protection for the auth endpoints: an address that keeps presenting bad credentials is banned.

The rule is GitLab's (rack-attack ``git_basic_auth``): after ``max_retry`` failed credentials from one
address within ``find_time`` seconds, that address is refused for ``ban_time`` seconds on every auth
endpoint, even with valid credentials. Other addresses are unaffected; allowlisted networks (loopback by
default: the resource servers on the same machine) are never banned. What counts as a failure is decided by
the caller (bad credentials, never a missing one: git's first request always comes without).

The hot path only asks "is this address banned?", answered from a dict in the process without I/O. Failures
do the counting: in memory when embedded, in Redis when it is configured, so that every process and machine
shares the counts and the bans. A ban started anywhere reaches every process through Redis pub/sub within
milliseconds (``follow``), and a periodic reload covers a missed message. Redis being down never fails an
auth answer: counting falls back to the process's own memory until it is back.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Final, Protocol

from redis import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class Clock(Protocol):
    """Anything that tells the time (the runtime's clock, which tests control)."""

    def now(self) -> datetime: ...


__all__ = [
    "LOOPBACK",
    "AddressBans",
    "BanPolicy",
    "BanStats",
    "IPNetwork",
    "RedisAddressBans",
    "address_bans",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK: Final[tuple[IPNetwork, ...]] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


@dataclass(frozen=True)
class BanPolicy:
    """``max_retry`` 0 switches banning off."""

    max_retry: int = 10
    find_time: float = 60.0
    ban_time: float = 3600.0
    allowlist: tuple[IPNetwork, ...] = LOOPBACK

    @property
    def enabled(self) -> bool:
        return self.max_retry > 0

    def allowlisted(self, address: str) -> bool:
        return _in_networks(address, self.allowlist)


@lru_cache(maxsize=4096)
def _in_networks(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(parsed in network for network in networks)


@dataclass(frozen=True)
class BanStats:
    banned_addresses: int  # bans in force, as this process knows them
    bans_started: int  # bans this process started (a failure crossed the threshold here)


@dataclass
class _Window:
    failures: deque[float] = field(default_factory=deque)


class AddressBans:
    """Failure counts and bans in this process's memory: the embedded default.

    Memory is bounded: at most ``capacity`` addresses are tracked; beyond that, stale windows go first and
    then the oldest, so a flood of addresses can cost an attacker their counts but never the process its
    memory.
    """

    def __init__(self, policy: BanPolicy, clock: Clock, *, capacity: int = 100_000) -> None:
        self.policy = policy
        self.clock = clock
        self.capacity = capacity
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        # address -> POSIX time the ban ends. Read without the lock on the hot path (a dict get is atomic).
        self._banned: dict[str, float] = {}
        self._bans_started = 0

    # The hot path --------------------------------------------------------------------------------------

    def is_banned(self, address: str | None, now: datetime) -> bool:
        banned = self._banned
        if not banned or address is None:
            return False
        until = banned.get(address)
        if until is None:
            return False
        if now.timestamp() < until:
            return True
        banned.pop(address, None)
        return False

    # Failures ------------------------------------------------------------------------------------------

    def register_failure(self, address: str | None, now: datetime) -> bool:
        """Count one failed credential from ``address``; True when it started a ban."""
        policy = self.policy
        if not policy.enabled or address is None or policy.allowlisted(address):
            return False
        moment = now.timestamp()
        if self._count(address, moment) < policy.max_retry:
            return False
        self._start_ban(address, moment + policy.ban_time)
        return True

    def _count(self, address: str, moment: float) -> int:
        """The failures from ``address`` inside the window ending at ``moment``, this one included."""
        with self._lock:
            window = self._windows.get(address)
            if window is None:
                self._make_room(moment)
                window = self._windows[address] = _Window()
            failures = window.failures
            failures.append(moment)
            horizon = moment - self.policy.find_time
            while failures and failures[0] <= horizon:
                failures.popleft()
            return len(failures)

    def _make_room(self, moment: float) -> None:
        if len(self._windows) < self.capacity:
            return
        horizon = moment - self.policy.find_time
        for stale in [key for key, window in self._windows.items() if window.failures[-1] <= horizon]:
            del self._windows[stale]
        while len(self._windows) >= self.capacity:
            del self._windows[next(iter(self._windows))]

    def _start_ban(self, address: str, until: float) -> None:
        with self._lock:
            self._windows.pop(address, None)
            self._bans_started += 1
        self._remember_ban(address, until)
        log.warning(
            "address %s banned from auth endpoints for %d s after %d failed credentials within %d s",
            address,
            self.policy.ban_time,
            self.policy.max_retry,
            self.policy.find_time,
        )

    def _remember_ban(self, address: str, until: float) -> None:
        banned = self._banned
        if address not in banned and len(banned) >= self.capacity:
            banned.pop(next(iter(banned)), None)
        banned[address] = max(until, banned.get(address, 0.0))

    # Followers and statistics ----------------------------------------------------------------------------

    def follow(self, stop: threading.Event) -> None:
        """Nothing to follow in memory: every ban is this process's own."""
        stop.wait()

    def stats(self) -> BanStats:
        now = self.clock.now().timestamp()
        with self._lock:
            started = self._bans_started
        return BanStats(sum(1 for until in list(self._banned.values()) if until > now), started)


class RedisAddressBans(AddressBans):
    """Counts and bans shared through Redis by every process and machine of one installation."""

    RELOAD_INTERVAL: Final = 5.0

    def __init__(
        self,
        policy: BanPolicy,
        clock: Clock,
        redis: Redis,
        *,
        prefix: str = "deploy-tokens:auth-bans:",
        capacity: int = 100_000,
    ) -> None:
        super().__init__(policy, clock, capacity=capacity)
        self.redis = redis
        self.prefix = prefix
        self._channel = f"{prefix}events"
        self._banned_key = f"{prefix}banned"
        self._redis_failing = False

    def _count(self, address: str, moment: float) -> int:
        key = f"{self.prefix}failures:{address}"
        try:
            pipeline = self.redis.pipeline(transaction=True)
            pipeline.zremrangebyscore(key, "-inf", moment - self.policy.find_time)
            pipeline.zadd(key, {f"{moment!r}:{secrets.token_hex(4)}": moment})
            pipeline.zcard(key)
            pipeline.expire(key, int(self.policy.find_time) + 1)
            count = int(pipeline.execute()[2])
        except RedisError:
            self._redis_failed("count a failed credential")
            return super()._count(address, moment)
        self._redis_failing = False
        return count

    def _start_ban(self, address: str, until: float) -> None:
        super()._start_ban(address, until)
        try:
            pipeline = self.redis.pipeline(transaction=True)
            pipeline.hset(self._banned_key, address, repr(until))
            pipeline.delete(f"{self.prefix}failures:{address}")
            pipeline.publish(self._channel, f"{until!r} {address}")
            pipeline.execute()
        except RedisError:
            self._redis_failed("share a ban")

    def _redis_failed(self, what: str) -> None:
        if not self._redis_failing:  # once per outage, not once per failed credential
            log.warning("Redis unavailable: could not %s; counting in this process", what, exc_info=True)
        self._redis_failing = True

    def reload(self) -> None:
        """Take every ban in force from Redis, and forget the ones that have ended."""
        now = self.clock.now().timestamp()
        stored = self.redis.hgetall(self._banned_key)
        ended = []
        for raw_address, raw_until in stored.items():
            address, until = _text(raw_address), float(_text(raw_until))
            if until > now:
                self._remember_ban(address, until)
            else:
                ended.append(raw_address)
        if ended:
            self.redis.hdel(self._banned_key, *ended)

    def follow(self, stop: threading.Event, *, interval: float = 0.5) -> None:
        """Apply bans started by other processes as they are published, until ``stop``."""
        while not stop.is_set():
            try:
                self._follow_once(stop, interval)
            except RedisError:
                self._redis_failed("follow bans")
                stop.wait(interval)

    def _follow_once(self, stop: threading.Event, interval: float) -> None:
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        try:
            pubsub.subscribe(self._channel)
            self.reload()
            reloaded = self.clock.now().timestamp()
            while not stop.is_set():
                message = pubsub.get_message(timeout=interval)
                if message is not None and message.get("type") == "message":
                    until, _, address = _text(message["data"]).partition(" ")
                    self._remember_ban(address, float(until))
                if self.clock.now().timestamp() - reloaded >= self.RELOAD_INTERVAL:
                    self.reload()
                    reloaded = self.clock.now().timestamp()
        finally:
            pubsub.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def address_bans(policy: BanPolicy, clock: Clock, redis_url: str | None) -> AddressBans:
    """The embedded counter without Redis; the shared one with it. Short socket timeouts: a stalled Redis
    must never hold an auth answer for long (a failure is then counted in the process)."""
    if redis_url is None:
        return AddressBans(policy, clock)
    client = Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
    return RedisAddressBans(policy, clock, client)
