"""The composition root: wires settings to the database, event store, projections, keys, vault and the
application services (access, tokens, directory and its lifecycle, members, expiry)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

# Importing the aggregates registers their pinned event topics before any stored event is read.
import domain.audit_streaming
import domain.deploy_token
import domain.federation
import domain.groups
import domain.instance_settings
import domain.path_claims
import domain.personal_access_tokens
import domain.projects
import domain.retention
import domain.users  # noqa: F401
from deploy_tokens.access import AccessService
from deploy_tokens.audit_streaming import AuditStreamer, AuditStreamingService
from deploy_tokens.directory import DirectoryService
from deploy_tokens.directory_lifecycle import DirectoryLifecycle
from deploy_tokens.expiry import ExpiryScan
from deploy_tokens.expiry_sender import ExpiryNotifier, NoticeContext
from deploy_tokens.federation import TokenExchange
from deploy_tokens.issuing import CredentialIssuer
from deploy_tokens.members import MembersService
from deploy_tokens.retention import ActivityRetentionService
from deploy_tokens.tokens import TokenService
from deploy_tokens.trust_policies import TrustPolicyService
from deploy_tokens.unit_of_work import UnitOfWork
from domain.clock import Clock, SystemClock
from infrastructure.activity import ActivityRecorder, create_activity_table
from infrastructure.audit_delivery import DeliveryPolicy, DeliveryPositions
from infrastructure.bans import AddressBans, address_bans
from infrastructure.db import CONNECT_TIMEOUT, Database, DatabaseProbe
from infrastructure.idempotency import IdempotencyRecords
from infrastructure.keys import Keyring
from infrastructure.mail import Mailer, mailer_from_url
from infrastructure.oidc import IdTokenVerifier
from infrastructure.settings import DatabaseLocation, Settings
from infrastructure.store import EventStore
from infrastructure.vault import CiTokenVault, DestinationTokenVault
from infrastructure.web_sessions import SessionKeys, SessionStore
from projections.audit import AuditTrail
from projections.audit_destinations import AuditDestinations
from projections.base import Projector
from projections.chain import EventChain
from projections.credential_index import CredentialIndex
from projections.credentials import CredentialLookup
from projections.directory import Directory
from projections.notifications import ExpiryNotifications
from projections.projection import Projection
from projections.trust_policies import TrustPolicies
from projections.views import ReadModel


def all_projections(keys: Keyring) -> list[Projection]:
    return [
        CredentialLookup(),
        Directory(),
        AuditTrail(),
        ExpiryNotifications(),
        EventChain(keys.chain_key),
        AuditDestinations(),
        TrustPolicies(),
    ]


@contextmanager
def setup_lock(location: DatabaseLocation) -> Iterator[None]:
    """Serialises start-up across processes: concurrent ``CREATE TABLE IF NOT EXISTS`` races on PostgreSQL's
    catalog (several gunicorn workers start at once). SQLite's write lock already serialises it."""
    if location.dialect != "postgresql":
        yield
        return
    # Connects within a bound like every other connection; waiting for another process's start-up is not
    # bounded by a statement timeout (the lock is held only while that process creates its tables).
    with psycopg.connect(location.conninfo(), autocommit=True, connect_timeout=CONNECT_TIMEOUT) as connection:
        connection.execute(
            "SELECT pg_advisory_lock(hashtext(%s))", (f"deploy-tokens-setup:{location.schema}",)
        )
        # The event store creates its tables, but not the schema they live in.
        connection.execute(f'CREATE SCHEMA IF NOT EXISTS "{location.schema}"')
        yield


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    db: Database
    store: EventStore
    projector: Projector
    read: ReadModel
    keys: Keyring
    vault: CiTokenVault
    uow: UnitOfWork
    access: AccessService
    tokens: TokenService
    directory: DirectoryService
    members: MembersService
    lifecycle: DirectoryLifecycle
    expiry_scan: ExpiryScan
    index: CredentialIndex
    activity: ActivityRecorder
    bans: AddressBans
    idempotency: IdempotencyRecords
    web_sessions: SessionStore
    trust_policies: TrustPolicyService
    token_exchange: TokenExchange
    # Readiness and metrics ask the database through it: never longer than its deadline, whatever the server.
    probe: DatabaseProbe = field(default_factory=DatabaseProbe)

    @classmethod
    def open(cls, settings: Settings, *, clock: Clock | None = None) -> Runtime:
        clock = clock or SystemClock()
        keys = Keyring(settings.secret_key)
        with setup_lock(settings.database):
            db = Database(settings.database)
            store = EventStore(settings.database)
            projector = Projector(store, db, all_projections(keys), batch_size=settings.projection_batch_size)
            projector.setup()
            store.run_in_save(projector.project_in_save)  # a command's events and rows commit together
            vault = CiTokenVault(db, keys.vault_key)
            idempotency = IdempotencyRecords(db, keys)
            web_sessions = SessionStore(db, SessionKeys(settings.secret_key), clock)
            with db.transaction() as cursor:
                vault.create_table(cursor)
                DestinationTokenVault(db, keys.vault_key).create_table(cursor)  # audit streaming
                DeliveryPositions(db).create_table(cursor)
                idempotency.create_table(cursor)
                web_sessions.create_table(cursor)
            create_activity_table(db)
        activity = ActivityRecorder(db)
        activity.start_on_first_record()
        read = ReadModel(db)
        uow = UnitOfWork(store, projector, clock)
        access = AccessService(uow, read, keys, clock)
        issuer = CredentialIssuer(uow, keys)
        tokens = TokenService(uow, access, issuer, read, keys, vault, clock)
        directory = DirectoryService(uow, access, issuer, read, clock)
        members = MembersService(uow, access, directory, read, clock)
        lifecycle = DirectoryLifecycle(uow, access, read, vault, clock)
        expiry_scan = ExpiryScan(tokens, uow, db, idempotency, clock)
        trust = TrustPolicyService(
            uow, access, tokens, db, clock, allow_insecure=settings.oidc_allow_insecure
        )
        # One verifier per process: its cache of each issuer's keys serves every request.
        verifier = IdTokenVerifier(clock=clock, allow_insecure=settings.oidc_allow_insecure)
        exchange = TokenExchange(uow, read, access, tokens, verifier, db, clock)
        index = CredentialIndex(db, store, keys, max_staleness=settings.auth_max_staleness, clock=clock)
        projector.add_listener(index.on_projected)
        projector.catch_up()
        index.refresh()
        bans = address_bans(settings.auth_bans, clock, settings.redis_url)
        return cls(
            settings,
            clock,
            db,
            store,
            projector,
            read,
            keys,
            vault,
            uow,
            access,
            tokens,
            directory,
            members,
            lifecycle,
            expiry_scan,
            index,
            activity,
            bans,
            idempotency,
            web_sessions,
            trust,
            exchange,
        )

    def expiry_notifier(self, mailer: Mailer | None = None) -> ExpiryNotifier:
        """The sender of expiry emails, through ``mailer`` or else the transport the settings configure."""
        settings = self.settings
        return ExpiryNotifier(
            self.tokens,
            self.uow,
            self.read,
            self.clock,
            NoticeContext(settings.external_url, settings.mail_from),
            lease=timedelta(seconds=settings.notification_lease),
            mailer=mailer
            if mailer is not None
            else mailer_from_url(settings.smtp_url, data_dir=settings.data_dir),
        )

    def activity_retention(self, **options: Any) -> ActivityRetentionService:
        """Activity retention (behaviour [retention]) as the settings configure it; ``options`` for tests
        (``step``, ``delete_batch``)."""
        return ActivityRetentionService(
            self.uow, self.db, self.settings, self.keys.chain_key, self.clock, **options
        )

    # Audit event streaming (behaviour [audit-streaming]) ------------------------------------------------------

    def audit_streaming(self) -> AuditStreamingService:
        """Creating, listing and deleting streaming destinations."""
        return AuditStreamingService(
            self.uow,
            self.access,
            self.db,
            DestinationTokenVault(self.db, self.keys.vault_key),
            self.clock,
            allow_insecure=self.settings.audit_stream.allow_insecure,
        )

    def audit_streamer(
        self, *, poll_interval: float = 1.0, policy: DeliveryPolicy | None = None
    ) -> AuditStreamer:
        """The streamer: one delivery thread per destination, bounded as the settings (or ``policy``) say."""
        vault = DestinationTokenVault(self.db, self.keys.vault_key)
        return AuditStreamer(
            self.db, vault, policy or self.settings.audit_stream, poll_interval=poll_interval
        )

    def close(self) -> None:
        self.probe.close()
        self.activity.close()  # writes what is queued while the database is still open
        self.store.close()
        self.db.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
