"""Forms (``application/x-www-form-urlencoded``): one reader for every form the gateway takes.

The browser's return comes through Tornado, which has parsed its query and its form before
any handler runs (``parse_qs_bytes``, ``parse_body_arguments``, at most ``MAX_FIELDS``
fields each); a provider's webhook body is parsed here by the same Tornado function with the
same limit. ``fields_of`` then reads both the same way: one value per field, UTF-8. So the
return and the webhook take the same forms and refuse the same ones, with the same answers.
"""

from __future__ import annotations

from collections.abc import Mapping

from tornado import httputil

from gateway.errors import BadRequest, UnsupportedMediaType

FORM = "application/x-www-form-urlencoded"
# The most fields a query or a form may have: the limit Tornado applies to the return's
# (its default ParseUrlEncodedConfig), read from Tornado so that it is defined once.
MAX_FIELDS: int = httputil.ParseUrlEncodedConfig().max_arguments


def require_form(content_type: str) -> None:
    """Raise UnsupportedMediaType unless ``content_type`` names a form."""
    if content_type.split(";")[0].strip().lower() != FORM:
        raise UnsupportedMediaType(f"the body must be a form ({FORM})", reason="content_type")


def invalid_form(cause: Exception) -> BadRequest:
    """The answer to a body Tornado's form parser refuses (more than ``MAX_FIELDS`` fields,
    an unsupported Content-Encoding), whoever parsed it."""
    return BadRequest(f"the body is not a valid form: {cause}", reason="bad_form")


def fields_of(sources: list[dict[str, list[bytes]]]) -> dict[str, str]:
    """One value per field, UTF-8, from parsed query and form arguments in that order (a
    later source wins over an earlier one for the same name)."""
    fields: dict[str, str] = {}
    for arguments in sources:
        for name, values in arguments.items():
            if len(values) != 1:
                raise BadRequest(f"field {name[:40]!r} given twice", reason="bad_form")
            try:
                fields[name] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise BadRequest("the fields are not UTF-8", reason="bad_form") from None
    return fields


def form_fields(headers: Mapping[str, str], body: bytes) -> dict[str, str]:
    """A request body's form fields, read as the return's form is read: nothing for an empty
    body, 415 for another Content-Type, then Tornado's parser and ``fields_of``."""
    if not body:
        return {}
    content_type = headers.get("Content-Type", "")
    require_form(content_type)
    encoding = headers.get("Content-Encoding")
    arguments: dict[str, list[bytes]] = {}
    try:
        httputil.parse_body_arguments(
            content_type,
            body,
            arguments,
            {},
            httputil.HTTPHeaders({"Content-Encoding": encoding}) if encoding else None,
        )
    except httputil.HTTPInputError as exc:
        raise invalid_form(exc) from None
    return fields_of([arguments])
