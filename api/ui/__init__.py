"""The web UI (behaviour [manage], [ui]): Settings > Repository > Deploy tokens for projects and groups,
signed in with a
personal access token. ``create_app`` registers :data:`ui`."""

from api.ui.views import ui

__all__ = ["ui"]
