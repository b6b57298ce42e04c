"""Our thin conftest for python-gitlab's functional suite: this service stands where its docker-compose GitLab stood.

Loaded with ``-p instance_conftest`` into a pytest run inside the unpacked sdist, with ``--confcutdir`` at
``tests/functional/cli``: the suite's own ``tests/conftest.py`` and ``tests/functional/conftest.py`` are then not
loaded as conftests (their fixtures would outrank a plugin's), so their fixtures are taken from those modules
below, unchanged, all but three:

* ``gitlab_url`` and ``gitlab_token``: the live service and its administrator's token (from the environment)
  instead of a container started, polled and given a token through ``docker exec gitlab-rails``;
* ``gl``: theirs, without ``reset_gitlab``, which empties a reused container of what earlier runs left (topics,
  instance CI variables, users); the service under test here is new for each run, so nothing is left.

Nothing else of theirs is replaced, and none of their tests is copied.
"""

from __future__ import annotations

import importlib
import os

import gitlab
import pytest

URL_VARIABLE = "DEPLOY_TOKENS_PEER_URL"
TOKEN_VARIABLE = "DEPLOY_TOKENS_PEER_TOKEN"

_root = importlib.import_module("tests.conftest")
_functional = importlib.import_module("tests.functional.conftest")

# Theirs, unchanged (tests/conftest.py): a clean python-gitlab configuration for every test.
test_dir = _root.test_dir
mock_clean_config = _root.mock_clean_config
default_files = _root.default_files

# Theirs, unchanged (tests/functional/conftest.py).
temp_dir = _functional.temp_dir
fixture_dir = _functional.fixture_dir
gitlab_config = _functional.gitlab_config
gitlab_plan = _functional.gitlab_plan
gitlab_premium = _functional.gitlab_premium
gitlab_ultimate = _functional.gitlab_ultimate
gitlab_version = _functional.gitlab_version
project = _functional.project
group = _functional.group
deploy_token = _functional.deploy_token
group_deploy_token = _functional.group_deploy_token


@pytest.fixture(scope="session")
def gitlab_url() -> str:
    return os.environ[URL_VARIABLE]


@pytest.fixture(scope="session")
def gitlab_token() -> str:
    return os.environ[TOKEN_VARIABLE]


@pytest.fixture(scope="session")
def gl(gitlab_url: str, gitlab_token: str) -> gitlab.Gitlab:
    instance = gitlab.Gitlab(gitlab_url, private_token=gitlab_token)
    instance.auth()
    return instance
