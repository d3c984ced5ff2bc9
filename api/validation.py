"""How a request that does not validate is described to its client: the field it names, a message that
quotes at most `QUOTE_LIMIT` characters of what the client sent, FastAPI's error list cut to size.
`api.errors` turns these into the 422 (or the 404 for a model that is not served)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

# An error message quotes at most this much of anything the client sent (a value, a field name).
QUOTE_LIMIT = 100
# And is never longer than this, whatever a validator put in it.
MESSAGE_LIMIT = 400


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`value` as an error message may show it: its first `limit` characters, and how long it was."""
    text = encodable(value if isinstance(value, str) else repr(value))
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def clipped(message: str, limit: int = MESSAGE_LIMIT) -> str:
    message = encodable(message)
    return message if len(message) <= limit else message[:limit] + "…"


def encodable(text: str) -> str:
    """`text` with what UTF-8 cannot carry (a lone surrogate, `\\ud800` in JSON) written as an escape: an
    error that quotes a client's bad text must itself be sendable."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def plain(value: object) -> object:
    """A value an error may echo as JSON: a non-finite number (NaN, ±Infinity) as its name, text encodable."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return encodable(value) if isinstance(value, str) else value


def public_errors(errors: list[Any]) -> list[dict[str, Any]]:
    """Validation errors as the client sees them: `loc`, `msg` and `type`, with the client's own input
    (field names in `loc`, values a `msg` quotes) cut to `QUOTE_LIMIT` characters."""
    return [
        {
            "type": error.get("type", "value_error"),
            "loc": [quoted(part) if isinstance(part, str) else part for part in error.get("loc", ())],
            "msg": _unechoed(str(error.get("msg", "invalid request")), error.get("input")),
            **_input_and_context(error),
        }
        for error in errors
    ]


def _input_and_context(error: Any) -> dict[str, Any]:
    """FastAPI's `input` and `ctx`, where they are small plain values: a number, a short string."""
    shown: dict[str, Any] = {}
    value = error.get("input")
    if value is None or isinstance(value, bool | int | float) or (isinstance(value, str) and len(value) <= QUOTE_LIMIT):
        shown["input"] = plain(value)
    context = error.get("ctx")
    if isinstance(context, dict):
        small = {
            k: plain(v)
            for k, v in context.items()
            if isinstance(v, bool | int | float) or isinstance(v, str) and len(v) <= QUOTE_LIMIT
        }
        if small:
            shown["ctx"] = small
    return shown


def _unechoed(message: str, value: object) -> str:
    # pydantic's own messages name the expected values, never the input; a custom validator's may quote a
    # string from the input it was given (for a model validator, the whole object).
    if len(message) > QUOTE_LIMIT:
        for text in sorted(_long_strings(value), key=len, reverse=True):
            for echo in (repr(text), text):
                message = message.replace(echo, quoted(text))
    return clipped(message)


def _long_strings(value: object, depth: int = 0) -> Iterator[str]:
    """The strings longer than `QUOTE_LIMIT` in a request body: keys and values, a few levels down."""
    if isinstance(value, str):
        if len(value) > QUOTE_LIMIT:
            yield value
    elif isinstance(value, dict) and depth < 4:
        for key, item in value.items():
            yield from _long_strings(key, depth + 1)
            yield from _long_strings(item, depth + 1)
    elif isinstance(value, list | tuple) and depth < 4:
        for item in value:
            yield from _long_strings(item, depth + 1)


def validation_summary(errors: list[Any]) -> tuple[str, str | None]:
    """A one-line message naming the first bad field, and that field's dotted name."""
    first = public_errors(errors[:1])[0]
    loc = [str(part) for part in first["loc"] if part not in ("body", "query", "path", "header")]
    param = ".".join(loc) or None
    message = first["msg"]
    return (f"{param}: {message}" if param else message), param


def unregistered_model_param(errors: list[Any], prefix: str | None = None) -> str | None:
    """The dotted name of the field that names a model the registry does not serve, if one does."""
    for error in errors:
        if error.get("type") == "model_not_found":
            loc = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "header")]
            return ".".join([prefix, *loc] if prefix else loc) or "model"
    return None
