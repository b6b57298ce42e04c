"""The directory, GitLab REST v4: users, groups, projects, members, application settings and features.

Views stay thin: they parse with marshmallow, call the application services (where every permission and
visibility rule lives) and dump through a schema. Everything is private, as on an instance whose public
visibility level is restricted: anonymous callers see no groups or projects (404 for one, ``[]`` for a
list) and no users (403 for the list, 404 for one, 401 for ``/user``). As in GitLab, writes and the members
API need authentication (401).
"""

from api.directory import groups, members, projects, settings, users
from api.directory.blueprint import directory

__all__ = ["directory", "groups", "members", "projects", "settings", "users"]
