"""API keys: held only as SHA-256 digests, compared in constant time; each key's id owns its jobs."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.datastructures import Headers

from config import Settings

ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Principal:
    id: str  # the owner recorded on jobs: `key_<first 12 hex of the key's digest>` or `anonymous`


class KeyRing:
    """The configured keys (raw or `sha256:<hex>`), reduced to digests at start-up."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.api_key_enabled
        self.header = settings.api_key_header_name
        self._digests: list[bytes] = []
        for secret in settings.api_keys:
            value = secret.get_secret_value()
            if value.startswith("sha256:"):
                self._digests.append(bytes.fromhex(value.removeprefix("sha256:")))
            else:
                self._digests.append(hashlib.sha256(value.encode()).digest())

    def authenticate(self, presented: str | None) -> Principal | None:
        if not self.enabled:
            return Principal(ANONYMOUS)
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        match: bytes | None = None
        for known in self._digests:  # compare against every key so timing does not reveal which matched
            if hmac.compare_digest(digest, known):
                match = known
        return Principal("key_" + match.hex()[:12]) if match is not None else None

    def presented(self, headers: Headers) -> str | None:
        """The key from the configured header, else from `Authorization: Bearer`."""
        value = headers.get(self.header)
        if value:
            return value
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return (token.strip() or None) if scheme.lower() == "bearer" else None
