"""The one way the services load and save aggregates: load, decide, save; retry a lost race; read your writes.

Each command loads the aggregates it needs from the event store, decides on them and saves every pending
event in one transaction. Losing an optimistic-concurrency race (another writer saved the same version
first) reloads and decides again on fresh state, so N concurrent revokes record one event. Integer ids are
claimed by saving the first event of the stream ``uuid5(kind, n)``. After a save the process brings its
projections up to that position, so its own reads see its own writes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from copy import deepcopy
from typing import Any, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, Recording

from domain.clock import Clock
from domain.deploy_token import deploy_token_uuid
from domain.errors import Conflict, NotFound, ValidationError
from domain.federation import trust_policy_uuid
from domain.instance_settings import InstanceSettings
from domain.streams import SETTINGS_ID, stream_id
from infrastructure.idempotency import IdempotencySlot, saving_with
from infrastructure.store import EventStore, IdAllocator
from projections.base import Projector

A = TypeVar("A", bound=Aggregate)

# What an idempotent command records with its events: the ids it creates and, for a credential, its value.
IdempotentResult = dict[str, Any]

_RETRIES = 50
# What ``AggregateViews`` keeps, by weight in units of about 100 bytes: a group's or project's view is about a
# kilobyte (10 units) plus 40-70 bytes per member (1 unit each, measured with deepcopy and tracemalloc), so
# the budget holds some 50,000 small views, or fewer with large member lists, in about 50 MB at most.
VIEWS_BUDGET = 500_000
_VIEW_BASE_WEIGHT = 10


def view_weight(view: Aggregate) -> int:
    """What a view counts against ``VIEWS_BUDGET``: its own size, and one unit per member it lists."""
    members = getattr(view, "members", None)
    return _VIEW_BASE_WEIGHT + (len(members) if isinstance(members, dict) else 0)


class AggregateViews:
    """Read-only current state of aggregates, for permission checks: each read asks the store only for the
    events after the version it holds (one short query, usually answered empty) instead of replaying the
    stream, so a check sees every committed change at once, as a full load would.

    Copy on write: a view handed out is never changed afterwards (new events are applied to a copy, which
    replaces it), so concurrent readers need no lock and never see half an update. The library's repository
    cache fast-forwards its cached aggregate in place, which a reader in another thread could see mid-way.
    Callers must not change a view; commands load their own aggregates with ``UnitOfWork.get``.
    """

    def __init__(self, store: EventStore, budget: int = VIEWS_BUDGET) -> None:
        self._events = store.events
        self._budget = budget
        self._lock = threading.Lock()
        self._views: OrderedDict[UUID, tuple[Aggregate, int]] = OrderedDict()  # with its weight
        self._weight = 0

    def get(self, cls: type[A], stream: UUID, what: str) -> A:
        with self._lock:
            entry = self._views.get(stream)
            if entry is not None:
                self._views.move_to_end(stream)  # the least recently read are forgotten first
        held = entry[0] if entry is not None else None
        newer = list(self._events.get(stream, gt=held.version if held is not None else None))
        view: Aggregate | None = held
        if newer:
            view = deepcopy(held) if held is not None else None
            for event in newer:
                if not isinstance(event, Aggregate.Event):
                    raise TypeError(f"stream {stream} holds {type(event).__name__}, not an aggregate's event")
                view = event.mutate(view)
            if view is not None:
                self._keep(stream, view)
        if not isinstance(view, cls):
            raise NotFound(what)
        return view

    def _keep(self, stream: UUID, view: Aggregate) -> None:
        with self._lock:
            entry = self._views.get(stream)
            if entry is None or entry[0].version < view.version:  # another reader may have kept a newer one
                weight = view_weight(view)
                self._weight += weight - (entry[1] if entry is not None else 0)
                self._views[stream] = (view, weight)
            self._views.move_to_end(stream)
            while self._weight > self._budget and self._views:
                _, (_, weight) = self._views.popitem(last=False)
                self._weight -= weight


class UnitOfWork:
    def __init__(self, store: EventStore, projector: Projector, clock: Clock) -> None:
        self.store = store
        self.projector = projector
        self.clock = clock
        self.token_ids = IdAllocator(store, deploy_token_uuid)
        # A user and their personal namespace share one id, so users are numbered by the namespace allocator.
        self.namespace_ids = IdAllocator(store, lambda n: stream_id("namespace", n))
        self.project_ids = IdAllocator(store, lambda n: stream_id("project", n))
        self.pat_ids = IdAllocator(store, lambda n: stream_id("pat", n))
        self.policy_ids = IdAllocator(store, trust_policy_uuid)
        self.views = AggregateViews(store)
        self._deferral = threading.local()

    # Loading -------------------------------------------------------------------------------------------

    def get(self, cls: type[A], stream: UUID, what: str) -> A:
        """The aggregate of ``stream`` as it is now; ``what`` (e.g. "404 Token") when there is none of ``cls``."""
        try:
            aggregate: Aggregate = self.store.repository.get(stream)
        except AggregateNotFoundError:
            raise NotFound(what) from None
        if not isinstance(aggregate, cls):
            raise NotFound(what)
        return aggregate

    def settings(self) -> InstanceSettings:
        """The instance settings; their defaults until an administrator first changes one."""
        try:
            aggregate: Aggregate = self.store.repository.get(SETTINGS_ID)
        except AggregateNotFoundError:
            return InstanceSettings.initial(self.clock.now())
        assert isinstance(aggregate, InstanceSettings)
        return aggregate

    # Saving --------------------------------------------------------------------------------------------

    def retry(
        self,
        attempt: Callable[[], Sequence[Aggregate]],
        *,
        idempotency: IdempotencySlot | None = None,
        result: IdempotentResult | None = None,
    ) -> list[Recording[Any]]:
        """Run a load-decide-save attempt; on a lost race, reload and decide again.

        With ``idempotency``, the key's record (``result``) commits with whichever attempt's events commit.
        """
        if idempotency is not None:
            idempotency.result = result
        with saving_with(idempotency):
            for _ in range(_RETRIES):
                aggregates = attempt()
                if not any(aggregate.pending_events for aggregate in aggregates):
                    return []
                try:
                    recordings = self.store.save(*aggregates)
                except IntegrityError:
                    continue
                self.caught_up(recordings)
                return recordings
        raise Conflict("the command kept losing concurrent races; try again")

    def save_new(
        self,
        ids: IdAllocator,
        build: Callable[[int], Sequence[Aggregate]],
        *,
        idempotency: IdempotencySlot | None = None,
        result: Callable[[int], IdempotentResult] | None = None,
        claims_path_of: str | None = None,
    ) -> tuple[int, list[Recording[Any]]]:
        """Save what ``build`` makes for the next free id of ``ids``; return the id and the recordings.

        The read models are not caught up yet: the caller does that (``caught_up``) once whatever must be
        in place before anyone can read the new object is. With ``idempotency``, the key's record
        (``result`` of the id tried) commits with the events. With ``claims_path_of`` (a field name), the
        aggregates include claims (and perhaps the parent group), which ``build`` loads fresh and checks: a
        lost race on one of them builds again; one that keeps losing is that field's validation error.
        """

        def build_for(number: int) -> Sequence[Aggregate]:
            if idempotency is not None:
                idempotency.result = result(number) if result is not None else None
            return build(number)

        with saving_with(idempotency):
            for _ in range(_RETRIES):
                try:
                    return ids.save_new(build_for)
                except IntegrityError:
                    if claims_path_of is None:
                        raise
                    # Not the id (the allocator retries those): a claim or the parent group changed since
                    # ``build`` loaded them. Build again on fresh state: a claim held by another is then
                    # refused by ``build`` itself.
                    continue
            raise ValidationError.single(claims_path_of or "base", "has already been taken")

    # Reading your writes -------------------------------------------------------------------------------

    def caught_up(self, recordings: Sequence[Recording[Any]]) -> None:
        """Read-your-writes: this process's read models include what it just wrote before it answers."""
        if recordings and not getattr(self._deferral, "active", False):
            self.projector.catch_up_with([recording.notification for recording in recordings])

    @contextmanager
    def projecting_later(self) -> Iterator[None]:
        """This thread's saves are not projected in their own transactions: many saves in a row are cheaper
        projected together, by one ``caught_up`` (or catch-up) after them."""
        with self.projector.deferring():
            yield

    @contextmanager
    def batch_of_commands(self) -> Iterator[None]:
        """Many automatic commands in a row (the expiry scan): catch the read models up once, at the end.

        Each command still decides on fresh aggregates from the event store; only the read models wait.
        Scoped to the calling thread, so API requests served meanwhile keep read-your-writes.
        """
        was_active = getattr(self._deferral, "active", False)
        self._deferral.active = True
        try:
            with self.projecting_later():
                yield
        finally:
            self._deferral.active = was_active  # an inner batch leaves the outer one deferring
            self.projector.catch_up()
