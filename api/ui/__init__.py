"""The web UI (R15, R16): Settings > Repository > Deploy tokens for projects and groups, signed in with a
personal access token. ``create_app`` registers :data:`ui`."""

from api.ui.views import ui

__all__ = ["ui"]
