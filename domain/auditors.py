"""Auditor accounts (behaviour [auditors]): read-only access to everything auditors look at, no writes.

Pure rules, decided from flags the caller already holds: the access service and the principal apply them.
"""

from __future__ import annotations


def reads_everything(*, is_admin: bool, is_auditor: bool) -> bool:
    """Every audit route (events, token activity and state, point-in-time answers, exports, the auditor pages)
    and every group's and project's deploy tokens and their history, without being a member."""
    return is_admin or is_auditor


def may_write(*, scopes: tuple[str, ...], is_admin: bool, is_auditor: bool) -> bool:
    """An auditor changes nothing; an administrator who is also an auditor keeps the administrator's rights.
    Anybody else writes with a token carrying the ``api`` scope (their role decides the rest)."""
    if is_auditor and not is_admin:
        return False
    return "api" in scopes
