"""The Gemma 3 Speech API's generation request (README: Migrating): its `GenerationRequest` as leniently as it took it,
turned into speechq's strict `generate` job request. Shared by `/v1/generate*` and `/v1/dialogue`'s
`generation_config`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from api.errors import validated
from contract.generation import GenerateRequest

# Past every vocabulary's size a top-k keeps everything, as 0 does: the same sampling, within the bound
# speechq keeps on what a worker is asked to allocate.
_TOP_K_ALL = 1_000_000


class LegacyGenerationRequest(BaseModel):
    """The original's `GenerationRequest`: its fields and bounds, unknown fields ignored, `stop: null`
    allowed; `model` (a registered name) is speechq's addition. Only the fields sent are applied."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str = Field(max_length=200_000)
    max_tokens: int = Field(512, ge=1, le=4096)
    temperature: float = Field(0.7, ge=0.0, le=100.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=0.0, le=100.0)
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0)
    min_p: float = Field(0.05, ge=0.0, le=100.0)
    tfs_z: float = Field(
        1.0, ge=0.0, le=100.0
    )  # accepted, as the original did; llama.cpp no longer has tail-free sampling
    typical_p: float = Field(1.0, ge=0.0, le=100.0)
    model: str | None = None

    def job_request(self) -> GenerateRequest:
        """The job this asks for, in speechq's terms (a 404 for an unregistered model, as everywhere)."""
        fields = self.model_dump(exclude_unset=True, exclude={"tfs_z"})
        if "stop" in fields:
            fields["stop"] = [stop for stop in fields["stop"] or () if stop]  # "" stops nothing
        if fields.get("top_k", 0) > _TOP_K_ALL:
            fields["top_k"] = 0
        if "seed" in fields and fields["seed"] is not None:
            fields["seed"] %= 2**32  # llama.cpp's seeds are 32-bit
        if fields.get("repeat_penalty") == 0:
            fields["repeat_penalty"] = 1.0  # dividing logits by zero samples nonsense: 0 means no penalty
        return validated(GenerateRequest, fields)
