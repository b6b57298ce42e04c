"""Queries over the credential-lookup projection: tokens, namespaces, projects and instance settings.

Auth checks do not come here (they answer from the in-memory replica, ``projections.credential_index``):
these serve the service, the management API, the UI and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from projections.base import ReadQueries
from projections.credentials import (
    NAMESPACE_COLUMNS,
    PROJECT_COLUMNS,
    TOKEN_COLUMNS,
    InstanceRecord,
    NamespaceRecord,
    ProjectRecord,
    TokenRecord,
    instance_settings,
    namespace_from_row,
    project_from_row,
    token_from_row,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    total: int
    page: int
    per_page: int


class CredentialQueries(ReadQueries):
    """Deploy tokens (never their values), the namespace tree, projects and the instance settings."""

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

    def token_ids_of(self, holder_kind: str, holder_id: int) -> list[int]:
        """The ids of every token a holder ever had, deleted ones included."""
        with self.db.read() as cursor:
            rows = cursor.execute(
                "SELECT token_id FROM cred_tokens WHERE holder_kind = ? AND holder_id = ? ORDER BY token_id",
                (holder_kind, holder_id),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def live_token_ids(self, holder_kind: str, holder_id: int) -> list[int]:
        """The ids of a holder's tokens that are not deleted (revoked and expired ones included)."""
        with self.db.read() as cursor:
            rows = cursor.execute(
                "SELECT token_id FROM cred_tokens WHERE holder_kind = ? AND holder_id = ? AND deleted_at IS NULL "
                "ORDER BY token_id",
                (holder_kind, holder_id),
            ).fetchall()
        return [int(row[0]) for row in rows]

    # Namespaces and projects -------------------------------------------------------------------------

    def subtree(self, group_id: int) -> tuple[list[int], list[int]]:
        """The ids of every group below ``group_id`` (parents before children) and of every project in it or
        below it."""
        below = "',' || {column} || ',' LIKE ?"
        pattern = f"%,{group_id},%"
        with self.db.read() as cursor:
            groups = cursor.execute(
                f"SELECT namespace_id, ancestor_ids FROM cred_namespaces WHERE kind = 'group' AND "
                f"{below.format(column='ancestor_ids')}",
                (pattern,),
            ).fetchall()
            projects = cursor.execute(
                f"SELECT project_id FROM cred_projects WHERE {below.format(column='group_ids')} "
                "ORDER BY project_id",
                (pattern,),
            ).fetchall()
        ordered = sorted(groups, key=lambda row: (len(str(row[1]).split(",")), int(row[0])))
        return [int(row[0]) for row in ordered], [int(row[0]) for row in projects]

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
        with self.db.read() as cursor:
            return instance_settings(cursor)
