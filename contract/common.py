"""What every job kind's contract shares: the served-model check on request fields, and fields a result
leaves out (rather than sends as null) when they do not apply."""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_core import PydanticCustomError

from contract.catalog import ModelRole, UnknownModel, registry

MODEL_NOT_FOUND = "model_not_found"


def registered(name: str | None, role: ModelRole) -> str | None:
    """`name` if the registry serves it for `role`; else a validation error the API answers with a 404.

    The message is the same for every unknown name, never echoing it: a client learns nothing about
    the worker's files from it.
    """
    if name is not None:
        try:
            registry().lookup(name, role)
        except UnknownModel:
            raise PydanticCustomError(
                MODEL_NOT_FOUND,
                "no {role} model of that name is served here; GET /v1/models lists them",
                {"role": role.value},
            ) from None
    return name


def _none(value: object) -> bool:
    return value is None


def omitted_when_none(**kwargs: Any) -> Any:
    """A field that defaults to None and is left out of the JSON while None: it only exists for some
    engines or options (word timestamps, a local engine's language probability)."""
    return Field(None, exclude_if=_none, **kwargs)
