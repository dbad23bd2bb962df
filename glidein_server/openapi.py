"""The OpenAPI 3.1 document, built from the route table and the shared wire schema."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from glidein_client.schema import ErrorBody

from .app import API, Route

_REF = "#/components/schemas/{name}"


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
        params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                  for p in re.findall(r"{(\w+)}", r.path)]
        if params:
            op["parameters"] = params
        if r.roles:
            op["security"] = [{"bearer": []}]
            op["x-roles"] = [role.value for role in r.roles]
        if r.request is not None:
            op["requestBody"] = {"required": True,
                                 "content": {"application/json": {"schema": by_type[r.request]}}}
        elif r.binary and r.method == "PUT":
            op["requestBody"] = {"required": True,
                                 "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                      "format": "binary"}}}}
        ok = "201" if r.method in ("PUT",) or r.path in ("/jobs", "/sites/{site}/pilots") and r.method == "POST" \
            else "200"
        if r.response is not None:
            op["responses"][ok] = {"description": "OK",
                                   "content": {"application/json": {"schema": by_type[r.response]}}}
        elif r.binary:
            op["responses"][ok] = {"description": "The file",
                                   "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                        "format": "binary"}}}}
        else:
            op["responses"][ok] = {"description": "OK", "content": {"application/json": {"schema": {
                "type": "object"}}}}
        paths.setdefault(API + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "glidein", "version": "1", "description": "Job queue, site demand and pilot API."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
