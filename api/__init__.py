"""The Flask API: GitLab v4-compatible management, auth checks, health. Built by ``create_app``."""

from api.app import create_app

__all__ = ["create_app"]
