"""Queries over the directory projection: users, personal access tokens and memberships."""

from __future__ import annotations

from projections.base import ReadQueries
from projections.directory import (
    PAT_COLUMNS,
    USER_COLUMNS,
    MemberRecord,
    PersonalAccessTokenRecord,
    UserRecord,
    pat_from_row,
    user_from_row,
)


class DirectoryQueries(ReadQueries):
    """Users (by id or username), personal access tokens (by digest) and memberships with their users."""

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

    def users_by_email(self, email: str) -> list[UserRecord]:
        """The users with this email address, in any case (users recorded before emails were unique may
        share one)."""
        with self.db.read() as cursor:
            rows = cursor.execute(
                f"SELECT {USER_COLUMNS} FROM dir_users WHERE LOWER(email) = ? ORDER BY user_id",
                (email.lower(),),
            ).fetchall()
        return [user_from_row(row) for row in rows]

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
