"""The read side as the service, the API and the CLI see it: one object over the relational read models."""

from __future__ import annotations

from projections.credential_queries import CredentialQueries
from projections.directory_queries import DirectoryQueries


class ReadModel(CredentialQueries, DirectoryQueries):
    """Every query of the credential-lookup and directory projections, over one database."""
