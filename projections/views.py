"""Plain queries over the read models, used by the service, the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from infrastructure.db import Database
from projections.credentials import (
    NAMESPACE_COLUMNS,
    PROJECT_COLUMNS,
    TOKEN_COLUMNS,
    InstanceRecord,
    NamespaceRecord,
    ProjectRecord,
    TokenRecord,
    namespace_from_row,
    project_from_row,
    token_from_row,
)
from projections.directory import (
    PAT_COLUMNS,
    USER_COLUMNS,
    MemberRecord,
    PersonalAccessTokenRecord,
    UserRecord,
    pat_from_row,
    user_from_row,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    per_page: int


class ReadModel:
    def __init__(self, db: Database) -> None:
        self.db = db

    # Tokens ------------------------------------------------------------------------------------------

    def token(self, token_id: int) -> TokenRecord | None:
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {TOKEN_COLUMNS} FROM cred_tokens WHERE token_id = ?", (token_id,)
            ).fetchone()
        return None if row is None else token_from_row(row)

    def tokens(
        self,
        *,
        holder_kind: str | None,
        holder_id: int | None,
        active_only: bool,
        now: datetime,
        page: int = 1,
        per_page: int = 20,
    ) -> Page[TokenRecord]:
        """Tokens of one holder (or all, for admins), newest id last, deleted ones never listed."""
        where = ["deleted_at IS NULL"]
        params: list[object] = []
        if holder_kind is not None:
            where.append("holder_kind = ? AND holder_id = ?")
            params += [holder_kind, holder_id]
        if active_only:
            where.append("revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)")
            params.append(now)
        clause = " AND ".join(where)
        with self.db.read() as cursor:
            total_row = cursor.execute(f"SELECT COUNT(*) FROM cred_tokens WHERE {clause}", params).fetchone()
            rows = cursor.execute(
                f"SELECT {TOKEN_COLUMNS} FROM cred_tokens WHERE {clause} ORDER BY token_id LIMIT ? OFFSET ?",
                [*params, per_page, (page - 1) * per_page],
            ).fetchall()
        total = int(total_row[0]) if total_row else 0
        return Page([token_from_row(row) for row in rows], total, page, per_page)

    # Namespaces and projects -------------------------------------------------------------------------

    def namespace(self, namespace_id: int) -> NamespaceRecord | None:
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {NAMESPACE_COLUMNS} FROM cred_namespaces WHERE namespace_id = ?", (namespace_id,)
            ).fetchone()
        return None if row is None else namespace_from_row(row)

    def namespace_by_path(self, full_path: str) -> NamespaceRecord | None:
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {NAMESPACE_COLUMNS} FROM cred_namespaces WHERE full_path_lower = ?",
                (full_path.lower(),),
            ).fetchone()
        return None if row is None else namespace_from_row(row)

    def groups(self, *, parent_id: int | None = None, only_children: bool = False) -> list[NamespaceRecord]:
        sql = f"SELECT {NAMESPACE_COLUMNS} FROM cred_namespaces WHERE kind = 'group'"
        params: list[object] = []
        if only_children:
            sql += " AND parent_id = ?"
            params.append(parent_id)
        with self.db.read() as cursor:
            rows = cursor.execute(sql + " ORDER BY namespace_id", params).fetchall()
        return [namespace_from_row(row) for row in rows]

    def project(self, project_id: int) -> ProjectRecord | None:
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {PROJECT_COLUMNS} FROM cred_projects WHERE project_id = ?", (project_id,)
            ).fetchone()
        return None if row is None else project_from_row(row)

    def project_by_path(self, full_path: str) -> ProjectRecord | None:
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {PROJECT_COLUMNS} FROM cred_projects WHERE full_path_lower = ?", (full_path.lower(),)
            ).fetchone()
        return None if row is None else project_from_row(row)

    def projects(self, *, namespace_id: int | None = None) -> list[ProjectRecord]:
        sql = f"SELECT {PROJECT_COLUMNS} FROM cred_projects"
        params: list[object] = []
        if namespace_id is not None:
            sql += " WHERE namespace_id = ?"
            params.append(namespace_id)
        with self.db.read() as cursor:
            rows = cursor.execute(sql + " ORDER BY project_id", params).fetchall()
        return [project_from_row(row) for row in rows]

    def instance(self) -> InstanceRecord:
        import json

        from domain.directory import KNOWN_FEATURES

        with self.db.read() as cursor:
            row = cursor.execute(
                "SELECT external_authorization_enabled, features FROM cred_settings WHERE id = 1"
            ).fetchone()
        if row is None:
            return InstanceRecord(False, dict(KNOWN_FEATURES))
        return InstanceRecord(bool(row[0]), dict(json.loads(row[1])))

    # Users, personal access tokens, members ----------------------------------------------------------

    def user(self, user_id: int) -> UserRecord | None:
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {USER_COLUMNS} FROM dir_users WHERE user_id = ?", (user_id,)
            ).fetchone()
        return None if row is None else user_from_row(row)

    def user_by_username(self, username: str) -> UserRecord | None:
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {USER_COLUMNS} FROM dir_users WHERE username_lower = ?", (username.lower(),)
            ).fetchone()
        return None if row is None else user_from_row(row)

    def users(self) -> list[UserRecord]:
        with self.db.read() as cursor:
            rows = cursor.execute(f"SELECT {USER_COLUMNS} FROM dir_users ORDER BY user_id").fetchall()
        return [user_from_row(row) for row in rows]

    def any_admin(self) -> bool:
        with self.db.read() as cursor:
            row = cursor.execute("SELECT 1 FROM dir_users WHERE is_admin = ? LIMIT 1", (True,)).fetchone()
        return row is not None

    def personal_access_token(self, digest: str) -> tuple[PersonalAccessTokenRecord, UserRecord] | None:
        pat_columns = ", ".join(f"p.{column.strip()}" for column in PAT_COLUMNS.split(","))
        user_columns = ", ".join(f"u.{column.strip()}" for column in USER_COLUMNS.split(","))
        with self.db.read() as cursor:
            row = cursor.execute(
                f"SELECT {pat_columns}, {user_columns} FROM dir_pats p JOIN dir_users u ON u.user_id = p.user_id "
                "WHERE p.digest = ?",
                (digest,),
            ).fetchone()
        if row is None:
            return None
        width = len(PAT_COLUMNS.split(","))
        return pat_from_row(row[:width]), user_from_row(row[width:])

    def members(self, source_kind: str, source_id: int) -> list[tuple[MemberRecord, UserRecord]]:
        user_columns = ", ".join(f"u.{column.strip()}" for column in USER_COLUMNS.split(","))
        with self.db.read() as cursor:
            rows = cursor.execute(
                f"SELECT m.access_level, {user_columns} FROM dir_members m JOIN dir_users u ON u.user_id = m.user_id "
                "WHERE m.source_kind = ? AND m.source_id = ? ORDER BY u.user_id",
                (source_kind, source_id),
            ).fetchall()
        return [
            (MemberRecord(source_kind, source_id, int(row[1]), int(row[0])), user_from_row(row[1:]))
            for row in rows
        ]

    def memberships_of(self, user_id: int) -> list[MemberRecord]:
        with self.db.read() as cursor:
            rows = cursor.execute(
                "SELECT source_kind, source_id, access_level FROM dir_members WHERE user_id = ?", (user_id,)
            ).fetchall()
        return [MemberRecord(str(row[0]), int(row[1]), user_id, int(row[2])) for row in rows]
