"""The auth checks resource servers call, one protocol per module, all on the ``auth_checks`` blueprint.

* ``nginx``: ``/internal/auth_request``, nginx's ``auth_request`` for Git over HTTP and package registries;
* ``registry``: ``/jwt/auth`` and ``/jwt/certificate``, the Docker registry's token server;
* ``json_check``: ``POST /internal/auth/check``, one decision as JSON for any other resource server;
* ``token_exchange``: ``POST /oauth/token``, a CI job's OIDC ID token exchanged for a short-lived deploy token.

What the three share (the blueprint, credentials, the decision, status codes) is ``common``; how every
decision is counted, recorded and held against a guessing client is ``record``.
"""

# Importing each protocol's module adds its routes to the blueprint.
from api.auth_checks import json_check, nginx, registry, token_exchange  # noqa: F401
from api.auth_checks.common import auth_checks

__all__ = ["auth_checks"]
