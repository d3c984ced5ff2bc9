"""Errors a job can end with. Each has a string `code` that becomes the job's `error.type`.

EngineError
├── EngineStalled         the engine stopped making progress; the worker restarts itself
├── ModelUnavailable      the model cannot be found or loaded here
├── InvalidJobInput       the request is well-formed but this engine cannot serve it
│   └── ContextOverflow   prompt + max_tokens exceed the model's context window
└── UpstreamError         a remote engine (OpenAudio) failed or answered nonsense
    └── UpstreamTimeout   a remote engine did not answer in time
"""

from __future__ import annotations


class EngineError(Exception):
    code = "engine_error"


class EngineStalled(EngineError):
    code = "engine_stalled"


class ModelUnavailable(EngineError):
    code = "model_unavailable"


class InvalidJobInput(EngineError):
    code = "invalid_input"


class ContextOverflow(InvalidJobInput):
    code = "context_length_exceeded"


class UpstreamError(EngineError):
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"
