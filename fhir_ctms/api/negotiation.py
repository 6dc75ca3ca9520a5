"""Content negotiation (R5 http.html#mime-type): JSON only, ``_format``, ``_pretty``, 406 and 415."""

from __future__ import annotations

from functools import lru_cache

from ..errors import NotAcceptable, UnsupportedMediaType

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"

_JSON_TYPES = {FHIR_JSON, "application/json", "application/json+fhir", "json", "fhir+json"}
#: a non-FHIR format, by ``_format`` only and for operations only (``$enrollment``'s spreadsheet
#: form): an operation without such a form answers in FHIR JSON (``http.render``)
CSV = "text/csv"
_ANY = {"*/*", "application/*"}


def _media(value: str) -> tuple[str, dict[str, str]]:
    kind, *params = value.split(";")
    out = {}
    for p in params:
        k, _, v = p.partition("=")
        out[k.strip().lower()] = v.strip().strip('"')
    return kind.strip().lower(), out


def _check_version(params: dict[str, str], error: type) -> None:
    version = params.get("fhirversion")
    if version is not None and version not in ("5.0", "5.0.0"):
        raise error(f"fhirVersion={version} is not served: this server speaks FHIR 5.0")


@lru_cache(maxsize=256)  # a pure function of three strings, which a client repeats on every request
def response_type(format_param: str | None, accept: str | None, csv: bool = False) -> str:
    """The media type of the response, or 406 when the client accepts nothing we serve.
    ``csv``: ``_format=csv`` (or ``text/csv``) is accepted (operations)."""
    if format_param is not None:
        kind, params = _media(format_param.replace(" ", "+"))
        if csv and kind in ("csv", CSV):
            return CSV
        if kind not in _JSON_TYPES:
            raise NotAcceptable(f"_format={format_param!r} is not served: this server serves JSON only")
        _check_version(params, NotAcceptable)
        return "application/json" if kind == "application/json" else FHIR_JSON
    if not accept:
        return FHIR_JSON
    offered = [_media(item) for item in accept.split(",") if item.strip()]
    for kind, params in offered:
        if params.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        if kind in _JSON_TYPES or kind in _ANY:
            _check_version(params, NotAcceptable)
            return "application/json" if kind == "application/json" else FHIR_JSON
    raise NotAcceptable(f"Accept: {accept!r}: this server serves application/fhir+json only")


def check_body_type(content_type: str | None, allowed: tuple[str, ...] = (FHIR_JSON, "application/json")) -> str:
    """The body's media type, or 415. A missing Content-Type is read as FHIR JSON."""
    if not content_type:
        return FHIR_JSON
    kind, params = _media(content_type)
    if kind in ("application/json+fhir",):
        kind = FHIR_JSON
    if kind not in allowed:
        raise UnsupportedMediaType(f"Content-Type {content_type!r} is not accepted here; use {', '.join(allowed)}")
    charset = params.get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"charset={charset}: bodies must be UTF-8")
    _check_version(params, UnsupportedMediaType)
    return kind
