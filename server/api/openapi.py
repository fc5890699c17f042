"""The OpenAPI 3.1 document, written from the operation table (pure: a dict, built once).

Every JSON answer is the envelope (components/schemas/Envelope) with the operation's `data`;
errors are the envelope without `data`, with the codes of their HTTP status
(components/responses/Error<status>; 429 and 503 carry Retry-After). Paged lists add `totalPage`,
`size`, `totalSize`. Downloads are bytes (200/206 with Content-Range, 304, 416). Multipart
uploads list their form fields; `otaInfo` is a JSON document (encoding application/json).
"""

from __future__ import annotations

from typing import Any

from server import BUILD, __version__
from server.api.operations import OPERATIONS, AuthKind, Link, Operation
from server.api.parts import SITE
from server.api.schema import Defs, JsonSchema, Node
from server.limits import INT_MAX, INT_MIN, MAX_HEADER_FIELD, MAX_JSON_DEPTH, MAX_REQUEST_LINE

ENVELOPE_KEYS = ("uq", "doc_version", "result", "code", "message", "build")

# HTTP status -> the envelope codes it carries (§1; 405 and 416 are ours: status x 100).
ERROR_CODES: dict[int, tuple[int, ...]] = {
    400: (40000, 40001),
    401: (40100,),
    403: (40300,),
    404: (40400,),
    405: (40500,),
    409: (40900,),
    413: (41300,),
    416: (41600,),
    422: (42200,),
    429: (42900,),
    503: (50300,),
}
ERROR_TEXT = {
    400: "Malformed request: 40000 (body not JSON, or the wrong JSON type) or 40001 (a field)",
    401: "Missing or unknown credentials",
    403: "Another site named in siteUuid/siteId",
    404: "No such object in the caller's site",
    405: "Method not allowed on this path (Allow lists the methods)",
    409: "Conflict: stale edit, or the same package+versionCode with other content",
    413: "Body or upload over the configured limit",
    416: "Range starts past the end of the file",
    422: "The object exists but is not for this device or profile",
    429: "Rate limited; retry after Retry-After seconds",
    503: "Overloaded or shutting down; retry after Retry-After seconds",
}
RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}

SECURITY: dict[AuthKind, list[dict[str, list[str]]]] = {
    "public": [],
    "key": [{"siteKey": []}],
    "admin": [{"siteKey": [], "adminToken": []}],
    "device": [{"siteKey": [], "deviceToken": []}],
    "file": [{"siteKey": [], "adminToken": []}, {"siteKey": [], "deviceToken": []}],
}

DESCRIPTION = f"""The reference MiDM server of midm-fleet (the protocol: shared/midm-api.md).

Every JSON answer is the envelope `{{uq, doc_version, result, code, message, build, data}}`;
an error is the envelope with `result: false`, a code of §1 and a message naming the field.
A request that fails validation changes nothing.

Rules that hold for every JSON body and `filter` beside the schemas: objects and arrays nest at
most {MAX_JSON_DEPTH} levels; integers are within [{INT_MIN}, {INT_MAX}]; numbers are finite
(no NaN or Infinity); strings are valid Unicode (no lone surrogate). An optional field sent as
null is the same as absent. Integers are never accepted as booleans or the reverse, and an
integer is written without a fraction or exponent (2, not 2.0: JSON Schema would count 2.0).
The request line (method, path and query) and each header line are at most {MAX_REQUEST_LINE}
and {MAX_HEADER_FIELD} bytes: a longer `filter` is 40000 whatever its schema says."""


def _envelope_component() -> JsonSchema:
    return {
        "type": "object",
        "required": list(ENVELOPE_KEYS),
        "properties": {
            "uq": {"type": "string", "format": "uuid", "description": "this answer's id"},
            "doc_version": {"const": "latest"},
            "result": {"type": "boolean"},
            "code": {"type": "integer"},
            "message": {"type": "string"},
            "build": {"type": "string"},
        },
    }


def _ok_envelope(operation: Operation, defs: Defs) -> JsonSchema:
    extra: JsonSchema = {
        "properties": {"result": {"const": True}, "code": {"const": 0}},
    }
    if operation.has_data:
        data = operation.data.schema(defs) if operation.data is not None else {"type": "null"}
        extra["properties"]["data"] = data
        extra["required"] = ["data"]
    else:
        extra["not"] = {"required": ["data"]}
    parts = [{"$ref": "#/components/schemas/Envelope"}, extra]
    if operation.listing == "paged":
        parts.append({"$ref": "#/components/schemas/Paged"})
    elif operation.listing == "sized":
        extra["required"] = [*extra.get("required", []), "size"]
        extra["properties"]["size"] = {"type": "integer", "minimum": 0}
    return {"allOf": parts}


def _error_component(status: int) -> JsonSchema:
    codes = ERROR_CODES[status]
    code: JsonSchema = {"const": codes[0]} if len(codes) == 1 else {"enum": list(codes)}
    response: JsonSchema = {
        "description": ERROR_TEXT[status],
        "content": {
            "application/json": {
                "schema": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Envelope"},
                        {
                            "properties": {"result": {"const": False}, "code": code},
                            "not": {"required": ["data"]},
                        },
                    ]
                }
            }
        },
    }
    if status in (429, 503):
        response["headers"] = RETRY_AFTER
    if status == 405:
        response["headers"] = {"Allow": {"schema": {"type": "string"}, "required": True}}
    return response


def _statuses(operation: Operation) -> list[int]:
    found = {400, 503, *operation.errors}
    if operation.auth != "public":
        found.add(401)
    if operation.auth in ("admin", "device", "file"):
        found.add(403)
    if operation.body is not None or operation.form is not None:
        found.add(413)
    return sorted(found)


def _download_responses() -> dict[str, Any]:
    types = ("application/vnd.android.package-archive", "application/zip")
    content: dict[str, JsonSchema] = {t: {} for t in types}
    headers = {
        "ETag": {"schema": {"type": "string"}, "required": True, "description": '"<sha256>"'},
        "X-Checksum-SHA256": {"schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
        "Accept-Ranges": {"schema": {"const": "bytes"}},
        "Content-Disposition": {"schema": {"type": "string"}},
    }
    content_range = {"schema": {"type": "string"}, "required": True}
    return {
        "200": {"description": "The whole file", "content": content, "headers": headers},
        "206": {
            "description": "The requested range",
            "content": content,
            "headers": {**headers, "Content-Range": content_range},
        },
        "304": {
            "description": "If-None-Match named the ETag",
            "headers": {"ETag": headers["ETag"]},
        },
    }


def _link(link: Link) -> JsonSchema:
    found: JsonSchema = {"operationId": link.target, "parameters": dict(link.parameters)}
    if link.body:
        found["requestBody"] = link.body
    return found


def _responses(operation: Operation, defs: Defs) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if operation.download:
        responses.update(_download_responses())
    elif operation.websocket:
        responses["101"] = {"description": "Switched to the WebSocket protocol"}
    elif operation.raw is not None:
        responses["200"] = {
            "description": operation.summary,
            "content": {"application/json": {"schema": operation.raw.schema(defs)}},
        }
    else:
        ok: dict[str, Any] = {
            "description": "Success (code 0)",
            "content": {"application/json": {"schema": _ok_envelope(operation, defs)}},
        }
        if operation.links:
            ok["links"] = {link.target: _link(link) for link in operation.links}
        responses["200"] = ok
    for status in _statuses(operation):
        responses[str(status)] = {"$ref": f"#/components/responses/Error{status}"}
    if operation.download:
        responses["416"] = {
            **_error_component(416),
            "headers": {"Content-Range": {"schema": {"type": "string"}, "required": True}},
        }
    return responses


def _parameters(operation: Operation, defs: Defs) -> list[JsonSchema]:
    params = [p.openapi(defs) for p in operation.params]
    if operation.auth in ("admin", "device", "file"):
        params.extend(p.openapi(defs) for p in SITE)
    if operation.download:
        for name, text in (
            ("Range", "one range, `bytes=first-last`, `bytes=first-` or `bytes=-suffix`"),
            ("If-None-Match", "the ETag held: 304 when it is current"),
            ("If-Range", "the ETag held: the range only if it is current"),
        ):
            params.append(
                {"name": name, "in": "header", "description": text, "schema": {"type": "string"}}
            )
    return params


def _form(operation: Operation, defs: Defs) -> JsonSchema:
    assert operation.form is not None
    properties: dict[str, Any] = {
        "file": {"type": "string", "contentMediaType": operation.form.file_type}
    }
    encoding: dict[str, Any] = {"file": {"contentType": operation.form.file_type}}
    for field in operation.form.fields:
        schema = field.json.schema(defs) if field.json is not None else field.node.schema(defs)
        if field.description:
            schema = {**schema, "description": field.description}
        properties[field.name] = schema
        if field.json is not None:
            encoding[field.name] = {"contentType": "application/json"}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": properties},
                "encoding": encoding,
            }
        },
    }


def _operation(operation: Operation, defs: Defs) -> JsonSchema:
    found: JsonSchema = {
        "operationId": operation.id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "security": SECURITY[operation.auth],
    }
    if operation.id == "login":
        found["security"] = [{}, {"siteKey": []}]
    if operation.description:
        found["description"] = operation.description
    params = _parameters(operation, defs)
    if params:
        found["parameters"] = params
    if operation.body is not None:
        found["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": operation.body.schema(defs)}},
        }
    elif operation.form is not None:
        found["requestBody"] = _form(operation, defs)
    found["responses"] = _responses(operation, defs)
    return found


def build_document(operations: tuple[Operation, ...] = OPERATIONS) -> dict[str, Any]:
    """The whole document for `operations`."""
    defs = Defs()
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(operation, defs)
    statuses = sorted({s for op in operations for s in _statuses(op)} | {405})
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "MiDM reference server (midm-fleet)",
            "version": __version__,
            "summary": BUILD,
            "description": DESCRIPTION,
        },
        "servers": [{"url": "/", "description": "this server"}],
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in operations)],
        "paths": paths,
        "components": {
            "schemas": {
                "Envelope": _envelope_component(),
                "Paged": {
                    "type": "object",
                    "required": ["totalPage", "size", "totalSize"],
                    "properties": {
                        "totalPage": {"type": "integer", "minimum": 0},
                        "size": {"type": "integer", "minimum": 1},
                        "totalSize": {"type": "integer", "minimum": 0},
                    },
                },
                **defs.schemas,
            },
            "responses": {f"Error{s}": _error_component(s) for s in statuses},
            "headers": {
                "RetryAfter": {
                    "description": "seconds to wait before retrying",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            },
            "securitySchemes": {
                "siteKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`access_token` from POST /portal/V1/auth",
                },
                "deviceToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Device <token>`, the token from POST /ota/api/agent/register",
                },
            },
        },
    }


def describe(node: Node) -> JsonSchema:
    """One node's schema on its own (named schemas inlined under $defs), for tests and tools."""
    defs = Defs(prefix="#/$defs/")
    schema = node.schema(defs)
    if defs.schemas:
        schema = {**schema, "$defs": defs.schemas}
    return schema
