"""The API described once: the operation table from which the OpenAPI document is written and
the structural checks are compiled, so that the two cannot disagree (issue 12).

Decisions [ours]:
- One declarative table (server.api.operations, made of server.api.parts): method, path,
  credentials, query parameters with types and bounds, the JSON body built from typed
  constructors (server.api.schema) that each write JSON Schema 2020-12 *and* compile the same
  rule, and the answer's `data` (server.api.models).
- Checks run after authentication (a caller without credentials learns nothing about shapes)
  and before the handler: query and path parameters in a middleware, the JSON body inside
  `json_body` right after parsing (server.handlers.request). They raise the codes the parsers
  raise (BadJson 40000 for the top-level type, InvalidField 40001 naming the field, in the
  format of server.domain.validation.Fields). The parsers keep every semantic check.
- Nothing the API accepted is refused by shape: unknown keys stay allowed (free-form values
  are checked for depth, 64-bit integers, finite numbers, valid Unicode and string and key
  lengths only), an optional field sent as null is absent. Tightened on purpose, as the
  parsers now do too: integers outside signed 64 bits, times before 1970 or past 9999, bodies
  and filters nested deeper than MAX_JSON_DEPTH, lone surrogates, query integers that are not
  ASCII digits; new: filters with more than MAX_FILTER_VALUES values per key, free-form
  strings over MAX_FREE_STRING and keys over MAX_KEY in any body (each a 40001 naming it).
- Multipart uploads and downloads are described (form fields, byte answers, Range) but read by
  their handlers; the document itself is served raw (not in the envelope) at
  GET /ota/api/openapi.json, public.
- Limits enforced here (server.limits): INT_MIN, INT_MAX, MAX_JSON_DEPTH, MAX_STRING, MAX_SERIAL,
  MAX_TIME_MS, MAX_DEVICE_BATCH, MAX_APPS, MAX_EVENTS, MAX_REFERENCES, MAX_PAGE, MAX_PAGE_SIZE,
  MAX_FREE_STRING, MAX_KEY, MAX_FILTER_VALUES, MIN_TIME_MS, MAX_REQUEST_LINE (stated).
"""
