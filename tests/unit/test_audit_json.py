"""The audit trail's JSON encoder (``projections.audit_rows.to_json``) writes exactly what
``json.dumps(value, sort_keys=True)`` writes: the ``details`` and ``data`` columns of rows projected before it,
and of rows it projects, are the same text."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.audit_rows import to_json

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text()  # any code point: escapes, surrogates, non-ASCII
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=25,
)


@given(_VALUES)
def test_the_text_is_json_dumps_with_sorted_keys(value: Any):
    assert to_json(value) == json.dumps(value, sort_keys=True)


def test_typical_details_keep_their_text():
    details = {
        "scopes": ["read_repository", "read_registry"],
        "previous_scopes": [],
        "name": 'deploy ünïcode "quoted" \n',
        "holder_id": 12,
        "expires_at": None,
        "grace_period": False,
    }
    assert to_json(details) == (
        '{"expires_at": null, "grace_period": false, "holder_id": 12, '
        '"name": "deploy \\u00fcn\\u00efcode \\"quoted\\" \\n", "previous_scopes": [], '
        '"scopes": ["read_repository", "read_registry"]}'
    )


@pytest.mark.parametrize("value", [{"at": datetime(2030, 1, 1, tzinfo=UTC)}, [object()], {1.5j}])
def test_what_json_cannot_encode_is_refused_as_json_dumps_refuses_it(value: Any):
    with pytest.raises(TypeError, match="not JSON serializable"):
        json.dumps(value, sort_keys=True)
    with pytest.raises(TypeError, match="not JSON serializable"):
        to_json(value)
