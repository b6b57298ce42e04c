"""The web UI (behaviour [manage], [ui]): Settings > Repository > Deploy tokens for projects and groups,
signed in with a
personal access token, and the auditor pages (``audit_pages``). ``create_app`` registers :data:`ui`."""

from api.ui import audit_pages  # noqa: F401  (registers the auditor pages on ``ui``)
from api.ui.views import ui

__all__ = ["ui"]
