"""The OpenAPI 3.1 document, built from the route table and the shared wire schema."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from glidein_client.wire.schema import ErrorBody
from glidein_server.http.routing import API, Route

_REF = "#/components/schemas/{name}"
#: Routes that answer 201 Created (besides every PUT).
_CREATED = {
    ("POST", "/jobs"),
    ("POST", "/sites/{site}/pilots"),
    ("POST", "/admin/users"),
    ("POST", "/admin/sites"),
    ("POST", "/admin/tokens"),
}
_STR = {"type": "string"}
#: Query parameters: (name, required, schema).
_QUERY: dict[tuple[str, str], list[tuple[str, bool, dict[str, Any]]]] = {
    ("GET", "/jobs"): [
        ("state", False, _STR),
        ("owner", False, _STR),
        ("label", False, {"type": "array", "items": _STR}),  # repeatable: jobs carrying every label
        ("ids", False, _STR),
        ("limit", False, {"type": "integer", "minimum": 0}),
        ("offset", False, {"type": "integer", "minimum": 0}),
        ("after", False, {"type": "integer"}),
        ("order", False, {"enum": ["asc", "desc"]}),
        ("counts", False, {"enum": ["1", "0"]}),
    ],
    ("GET", "/jobs/{job_id}/outputs"): [("name", True, _STR)],
    ("PUT", "/pilot/attempts/{attempt_id}/outputs"): [("name", True, _STR)],
    ("GET", "/admin/tokens"): [
        ("role", False, {"enum": ["operator", "user", "site", "pilot"]}),
        ("subject", False, _STR),
        ("revoked", False, {"enum": ["0", "1"]}),
    ],
}
#: Header parameters besides the bearer token.
_HEADERS: dict[tuple[str, str], list[tuple[str, dict[str, Any]]]] = {
    ("PUT", "/pilot/attempts/{attempt_id}/outputs"): [
        ("X-Glidein-Lease", _STR),
        ("X-Glidein-Sha256", {"type": "string", "pattern": "^[0-9a-f]{64}$"}),
    ],
}
_TOTP = ("X-Glidein-TOTP", {"type": "string", "pattern": "^[0-9]{6}$"})
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
#: Path parameters by name (others are plain strings).
_PATH = {
    "job_id": {"type": "integer", "minimum": 1},
    "attempt_id": {"type": "integer", "minimum": 1},
    "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "site": _NAME,
    "name": _NAME,
    "token_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
}


def document(routes: Sequence[Route]) -> dict[str, Any]:
    types = [ErrorBody]
    for r in routes:
        types += [t for t in (r.request, r.response) if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    error = {"application/json": {"schema": by_type[ErrorBody]}}
    paths: dict[str, dict[str, Any]] = {}
    for r in routes:
        op: dict[str, Any] = {
            "summary": r.summary,
            "operationId": f"{r.method.lower()}_{re.sub(r'[^a-z0-9]+', '_', r.path.lower()).strip('_')}",
            "responses": {
                "4XX": {"description": "Refused, with a plain message and a hint", "content": error},
            },
        }
        params = [
            {"name": p, "in": "path", "required": True, "schema": _PATH.get(p, _STR)}
            for p in re.findall(r"{(\w+)}", r.path)
        ]
        params += [
            {"name": n, "in": "query", "required": req, "schema": sch}
            for n, req, sch in _QUERY.get((r.method, r.path), [])
        ]
        headers = _HEADERS.get((r.method, r.path), []) + ([_TOTP] if r.path.startswith("/admin/") else [])
        params += [{"name": n, "in": "header", "required": True, "schema": sch} for n, sch in headers]
        if params:
            op["parameters"] = params
        if r.roles:
            op["security"] = [{"bearer": []}]
            op["x-roles"] = [role.value for role in r.roles]
        if r.request is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": by_type[r.request]}}}
        elif r.binary and r.method == "PUT":
            op["requestBody"] = {
                "required": True,
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        ok = "201" if r.method == "PUT" or (r.method, r.path) in _CREATED else "200"
        if r.response is not None:
            op["responses"][ok] = {
                "description": "OK",
                "content": {"application/json": {"schema": by_type[r.response]}},
            }
        elif r.binary:
            op["responses"][ok] = {
                "description": "The file",
                "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
            }
        else:
            op["responses"][ok] = {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
        paths.setdefault(API + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "glidein", "version": "1", "description": "Job queue, site demand and pilot API."},
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
