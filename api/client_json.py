"""JSON a client sent inside something else (a form field, a batch line, a WebSocket message), read with the
body's rules: bad JSON, a non-finite number (NaN, Infinity) or nesting past MAX_JSON_DEPTH is the client's
error, naming the field; nothing reaches a `RecursionError`."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from api.errors import ApiError, Unprocessable

MAX_JSON_DEPTH = 32  # no request speechq takes nests deeper (a chat's messages: 4); the parser's own limit is ~1,000


def load_json(text: str | bytes, param: str | None = None, *, bad: Callable[[str], ApiError] | None = None) -> Any:
    """`text` parsed; bad JSON is `bad(message)` (a 422 naming `param` unless the route answers as the
    original did), a non-finite number or nesting past MAX_JSON_DEPTH a 422 naming `param`."""
    where = f"{param}: " if param else ""
    try:
        value = json.loads(text, parse_constant=_non_finite)
    except _NonFinite as exc:
        raise Unprocessable(f"{where}{exc} is not a number JSON allows", param=param) from None
    except RecursionError:
        value = _TOO_DEEP
    except ValueError as exc:  # bad JSON, bytes that are not UTF-8, or an integer too long to read
        message = f"{where}invalid JSON ({str(exc)[:80]})"
        raise (bad(message) if bad is not None else Unprocessable(message, param=param)) from None
    if value is _TOO_DEEP or _depth_past(value, MAX_JSON_DEPTH):
        raise Unprocessable(f"{where}JSON nested deeper than {MAX_JSON_DEPTH} levels", param=param)
    return value


class _NonFinite(ValueError):
    pass


_TOO_DEEP = object()


def _non_finite(name: str) -> Any:
    raise _NonFinite(name)


def _depth_past(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and objects more than `limit` deep (walked without recursion)."""
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False
