"""The credential index's token storage, sized for a million tokens per API process.

Live tokens (neither revoked, deleted nor expired) are what auth checks allow, so they are found by a dict
lookup of their keyed digest (its first 16 bytes) and handed to ``decide`` as they are: a ``LiveToken`` holds
only what the decision needs, in four slots (about 64 bytes). What many tokens share lives on the class: one
small class per holder kind and scope set, built once, so the holder kind and the scope set cost a token
nothing. A token's default username (behaviour [username]) is derived from its id when asked for, since it is
one per token and would double the record.

Dead tokens (revoked, deleted, expired) are refused whatever they ask, so only the answer is kept: the first
8 bytes of the digest, the token id, the reason and the holder, 28 bytes in four arrays
(``DeadDigests``). A value whose digest is in neither structure is unknown, answered without touching the
database: a guess costs one digest, one dict miss and one binary search.

The figures and the alternatives measured are in the report of issue 16 (docs/performance.md).
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from datetime import datetime
from itertools import islice
from operator import le
from typing import ClassVar, Final

# Why a dead token is refused, in the order ``decide`` checks them: a deleted token that was also revoked is
# "deleted", a revoked one that has also expired is "revoked".
DELETED: Final = 1
REVOKED: Final = 2
EXPIRED: Final = 3

_KIND_GROUP = 4  # the holder-kind bit of a dead token's packed answer
_REASON_MASK = 3
_TOKEN_SHIFT = 3
_TOMBSTONE = -1  # a base entry that no longer answers for anyone (its token changed, rarely)


def prefix_of(digest: bytes) -> int:
    """The first 8 bytes of a digest, as the key of ``DeadDigests``."""
    return int.from_bytes(digest[:8], "big")


class LiveToken:
    """A live token as auth decisions read it: the ``TokenFacts`` of ``projections.access``.

    Never built directly: ``token_class`` gives the class for a holder kind, scope set and username.
    """

    __slots__ = ("digest", "expires_at", "holder_id", "token_id")

    holder_kind: ClassVar[str] = ""
    scope_set: ClassVar[frozenset[str]] = frozenset()
    revoked: ClassVar[bool] = False
    deleted: ClassVar[bool] = False

    token_id: int
    holder_id: int
    expires_at: datetime | None
    digest: bytes  # the key it is held under, so that a change can remove it

    def __init__(self, token_id: int, holder_id: int, expires_at: datetime | None, digest: bytes) -> None:
        self.token_id = token_id
        self.holder_id = holder_id
        self.expires_at = expires_at
        self.digest = digest

    @property
    def username(self) -> str:
        # default_username(), inline (a call less on every allowed check); a unit test holds them equal
        return f"gitlab+deploy-token-{self.token_id}"

    def is_expired(self, now: datetime) -> bool:
        """behaviour [expiry]: expired iff ``now >= expires_at``."""
        return self.expires_at is not None and now >= self.expires_at


class CustomNamedToken(LiveToken):
    """A live token with a username of its own (behaviour [username])."""

    __slots__ = ("custom_username",)

    custom_username: str

    def __init__(
        self, token_id: int, holder_id: int, expires_at: datetime | None, digest: bytes, username: str
    ) -> None:
        super().__init__(token_id, holder_id, expires_at, digest)
        self.custom_username = username

    @property
    def username(self) -> str:
        return self.custom_username


_classes: dict[tuple[str, frozenset[str], bool], type[LiveToken]] = {}


def token_class(holder_kind: str, scope_set: frozenset[str], custom_username: bool) -> type[LiveToken]:
    """The class of live tokens of one holder kind and scope set: at most 2 x 127 x 2 of them, ever."""
    key = (holder_kind, scope_set, custom_username)
    found = _classes.get(key)
    if found is None:
        base = CustomNamedToken if custom_username else LiveToken
        found = type(
            f"{base.__name__}[{holder_kind}:{','.join(sorted(scope_set))}]",
            (base,),
            {"__slots__": (), "holder_kind": holder_kind, "scope_set": scope_set},
        )
        # setdefault: two threads building the same class keep one
        found = _classes.setdefault(key, found)
    return found


class DeadToken:
    """What a dead token answers: refused for its reason, before anything about the request is read.

    Built when a dead digest is presented (a rare path); ``decide`` stops at ``deleted``, ``revoked`` or
    ``is_expired``, so it never reads a scope or a username of it.
    """

    __slots__ = ("holder_id", "holder_kind", "reason", "token_id")

    scope_set: ClassVar[frozenset[str]] = frozenset()
    username: ClassVar[None] = None

    def __init__(self, token_id: int, reason: int, holder_kind: str, holder_id: int) -> None:
        self.token_id = token_id
        self.reason = reason
        self.holder_kind = holder_kind
        self.holder_id = holder_id

    @property
    def deleted(self) -> bool:
        return self.reason == DELETED

    @property
    def revoked(self) -> bool:
        return self.reason == REVOKED

    def is_expired(self, now: datetime) -> bool:
        # Taken out of memory once the index's clock passed its expiry; checks run on that clock, after it.
        return self.reason == EXPIRED


# A dead token's answer as the database packs it at load (the same layout as ``_pack``): the per-token work of a
# load is done by the database, in C (``projections.credential_load``).
DEAD_PACKED_SQL: Final = (
    f"token_id * {1 << _TOKEN_SHIFT} + CASE WHEN holder_kind = 'group' THEN {_KIND_GROUP} ELSE 0 END + "
    f"CASE WHEN deleted_at IS NOT NULL THEN {DELETED} WHEN revoked_at IS NOT NULL THEN {REVOKED} ELSE {EXPIRED} END"
)


def _pack(token_id: int, reason: int, holder_kind: str) -> int:
    return token_id << _TOKEN_SHIFT | (_KIND_GROUP if holder_kind == "group" else 0) | reason


def unpack_dead(packed: int, holder_id: int) -> DeadToken:
    kind = "group" if packed & _KIND_GROUP else "project"
    return DeadToken(packed >> _TOKEN_SHIFT, packed & _REASON_MASK, kind, holder_id)


_unpack = unpack_dead


def big_endian_numbers(numbers: str | bytes) -> array[int]:
    """8-byte big-endian unsigned numbers end to end (or their hex: a digest's first 16 hex digits are its
    ``prefix_of``), as an array."""
    converted = array("Q")
    converted.frombytes(bytes.fromhex(numbers) if isinstance(numbers, str) else numbers)
    if sys.byteorder == "little":
        converted.byteswap()
    return converted


class DeadDigests:
    """Dead tokens by the first 8 bytes of their digest: 28 bytes each, in arrays.

    ``_prefixes`` is sorted, and ``_slots`` gives for each prefix where its answer is in ``_packed`` and
    ``_holders``: where they were loaded (a load gets them sorted, ``from_arrays``), and at the end for the
    tokens merged since.

    64 bits tell a presented value apart from every dead token's with a chance of about one in 2^64 / n per
    guess of being taken for one (it is refused either way; only the recorded reason would differ). Tokens
    that die while the process runs go to a small dict first and are merged into the arrays in bulk, so a
    death costs no array copy.
    """

    # Merged into the arrays when this many wait (or an eighth of the arrays, whichever is larger): the merge
    # copies the arrays once, so it stays rare.
    MERGE_AT: ClassVar[int] = 4096

    def __init__(self) -> None:
        self._prefixes = array("Q")
        self._slots = array("I")
        self._packed = array("q")
        self._holders = array("q")
        self._recent: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._prefixes) + len(self._recent)

    def _slot(self, prefix: int) -> int:
        prefixes = self._prefixes
        at = bisect_left(prefixes, prefix)
        return self._slots[at] if at < len(prefixes) and prefixes[at] == prefix else -1

    def get(self, digest: bytes) -> DeadToken | None:
        prefix = prefix_of(digest)
        recent = self._recent.get(prefix)
        if recent is not None:
            return _unpack(*recent)
        slot = self._slot(prefix)
        if slot < 0 or self._packed[slot] == _TOMBSTONE:
            return None
        return _unpack(self._packed[slot], self._holders[slot])

    def put(self, digest: bytes, token_id: int, reason: int, holder_kind: str, holder_id: int) -> None:
        prefix = prefix_of(digest)
        packed = _pack(token_id, reason, holder_kind)
        slot = self._slot(prefix)
        if slot >= 0:
            self._packed[slot] = packed
            self._holders[slot] = holder_id
            return
        self._recent[prefix] = (packed, holder_id)
        if len(self._recent) >= max(self.MERGE_AT, len(self._prefixes) // 8):
            self._merge()

    def discard(self, digest: bytes, token_id: int) -> None:
        """Forget the entry of ``token_id`` under this digest (never another token's sharing the prefix)."""
        prefix = prefix_of(digest)
        recent = self._recent.get(prefix)
        if recent is not None:
            if recent[0] >> _TOKEN_SHIFT == token_id:
                del self._recent[prefix]
            return
        slot = self._slot(prefix)
        if slot >= 0 and self._packed[slot] != _TOMBSTONE and self._packed[slot] >> _TOKEN_SHIFT == token_id:
            self._packed[slot] = _TOMBSTONE

    def _merge(self) -> None:
        """The recent entries into the arrays: their answers at the end of the storage, their prefixes (and
        slots) in order, one copy of each sorted array, slice by slice."""
        prefixes, slots = array("Q"), array("I")
        start = 0
        for prefix in sorted(self._recent):
            at = bisect_left(self._prefixes, prefix, start)
            prefixes += self._prefixes[start:at]
            slots += self._slots[start:at]
            value, holder = self._recent[prefix]
            prefixes.append(prefix)
            slots.append(len(self._packed))
            self._packed.append(value)
            self._holders.append(holder)
            start = at
        prefixes += self._prefixes[start:]
        slots += self._slots[start:]
        self._prefixes, self._slots = prefixes, slots
        self._recent = {}

    @classmethod
    def from_arrays(cls, prefixes: array[int], packed: array[int], holders: array[int]) -> DeadDigests:
        """Dead tokens as a load reads them (``credential_load``): the n-th prefix (``prefix_of``), packed
        answer and holder id belong together, and the prefixes come in ascending order. The arrays are kept as
        they are. The order is checked, not trusted: arrays out of order are sorted here, slower, with the same
        answers."""
        if not len(prefixes) == len(packed) == len(holders):
            raise ValueError("dead tokens whose parts differ in length")
        if not all(map(le, prefixes, islice(prefixes, 1, None))):
            loader = DeadDigestsLoader()
            loader.add_records(prefixes, packed, holders)
            return loader.build()
        dead = cls()
        dead._prefixes, dead._packed, dead._holders = prefixes, packed, holders
        dead._slots = array("I", range(len(prefixes)))
        return dead

    def memory_bytes(self) -> int:
        """The arrays' own size (the recent dict aside): what a dead token costs once merged."""
        parts = (self._prefixes, self._slots, self._packed, self._holders)
        return sum(part.itemsize * len(part) for part in parts)


class DeadDigestsLoader:
    """Gathers dead tokens in any order, then sorts them once (a load gets them sorted: ``from_arrays``)."""

    def __init__(self) -> None:
        self._prefixes = array("Q")
        self._packed = array("q")
        self._holders = array("q")

    def add_records(self, prefixes: array[int], packed: array[int], holders: array[int]) -> None:
        """Many dead tokens at once: the n-th prefix, packed answer and holder id belong together."""
        if not len(prefixes) == len(packed) == len(holders):
            raise ValueError("dead tokens whose parts differ in length")
        self._prefixes.frombytes(prefixes.tobytes())
        self._packed.frombytes(packed.tobytes())
        self._holders.frombytes(holders.tobytes())

    def add(self, prefix: int, packed: int, holder_id: int) -> None:
        """One dead token: its digest's prefix (``prefix_of``), its packed answer and its holder id."""
        self._prefixes.append(prefix)
        self._packed.append(packed)
        self._holders.append(holder_id)

    def build(self) -> DeadDigests:
        # The permutation is the only Python object per token, and it is gone when this returns.
        prefixes = self._prefixes
        order = sorted(range(len(prefixes)), key=prefixes.__getitem__)
        dead = DeadDigests()
        dead._prefixes = array("Q", map(prefixes.__getitem__, order))
        dead._slots = array("I", order)
        dead._packed, dead._holders = self._packed, self._holders
        self.__init__()  # type: ignore[misc]
        return dead
