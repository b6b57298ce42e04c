"""Request parsing: GitLab accepts parameters in the query string, a form body or a JSON body."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import marshmallow
from flask import Response, request
from marshmallow import Schema, fields, validate

from projections.credential_queries import Page


def request_params() -> dict[str, Any]:
    """Query string, then form, then JSON: later sources win, as in Grape."""
    params: dict[str, Any] = {}
    for key in request.args:
        values = request.args.getlist(key)
        name = key[:-2] if key.endswith("[]") else key
        params[name] = values if key.endswith("[]") or len(values) > 1 else values[0]
    for key in request.form:
        values = request.form.getlist(key)
        name = key[:-2] if key.endswith("[]") else key
        params[name] = values if key.endswith("[]") or len(values) > 1 else values[0]
    body = request.get_json(silent=True) if request.is_json else None
    if isinstance(body, Mapping):
        params.update(body)
    elif request.is_json and request.get_data() and body is None:
        raise marshmallow.ValidationError({"body": ["is not valid JSON"]})
    return params


def load(schema: Schema) -> dict[str, Any]:
    loaded: dict[str, Any] = schema.load(request_params(), unknown=marshmallow.EXCLUDE)
    return loaded


class PaginationSchema(Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=100_000))
    per_page = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))


def paginated(page: Page[Any], body: Any) -> Response:
    """GitLab's pagination headers: X-Total, X-Total-Pages, X-Page, X-Per-Page, X-Next-Page, X-Prev-Page, Link."""
    from flask import jsonify

    response = jsonify(body)
    total_pages = max(math.ceil(page.total / page.per_page), 1)
    response.headers["X-Total"] = str(page.total)
    response.headers["X-Total-Pages"] = str(total_pages)
    response.headers["X-Page"] = str(page.page)
    response.headers["X-Per-Page"] = str(page.per_page)
    response.headers["X-Next-Page"] = str(page.page + 1) if page.page < total_pages else ""
    response.headers["X-Prev-Page"] = str(page.page - 1) if page.page > 1 else ""
    links = []
    base = request.base_url
    query = {key: value for key, value in request.args.items() if key not in ("page", "per_page")}

    def link(number: int, rel: str) -> str:
        return f'<{base}?{urlencode({**query, "page": number, "per_page": page.per_page})}>; rel="{rel}"'

    if page.page > 1:
        links.append(link(page.page - 1, "prev"))
    if page.page < total_pages:
        links.append(link(page.page + 1, "next"))
    links.append(link(1, "first"))
    links.append(link(total_pages, "last"))
    response.headers["Link"] = ", ".join(links)
    return response


def paginate_list(items: list[Any], page: int, per_page: int) -> Page[Any]:
    start = (page - 1) * per_page
    return Page(items[start : start + per_page], len(items), page, per_page)
