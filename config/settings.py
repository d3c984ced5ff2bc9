"""`Settings`: every environment variable, typed, documented and validated once at start-up."""

from __future__ import annotations

import base64
import binascii
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class SettingsError(Exception):
    """A bad environment variable; the message names it."""


Tier = Literal["priority", "default", "flex"]
TIERS: tuple[Tier, ...] = ("priority", "default", "flex")


class KeyPolicy(BaseModel):
    """What one API key may ask of the scheduler (`API_KEY_POLICIES`)."""

    model_config = ConfigDict(extra="forbid")

    tiers: list[Tier] = Field(default_factory=lambda: list(TIERS), min_length=1)
    """The service tiers the key may use; a request for a higher one runs at the highest of these below it."""
    default_tier: Tier = "default"
    """What a request that asks `auto` (or nothing, on a route without a default of its own) gets."""
    weight: float = Field(1.0, gt=0, le=1000)
    """The key's share against other keys in the same tier (fair queuing)."""

    @model_validator(mode="after")
    def _default_is_allowed(self) -> Self:
        if self.default_tier not in self.tiers:
            raise ValueError(f"default_tier {self.default_tier!r} is not among its tiers {self.tiers}")
        return self


class Settings(BaseSettings):
    """speechq configuration. Field names are the environment variable names, case-insensitive."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- Redis, broker, API --------------------------------------------------------------------
    redis_url: str | None = None
    """Job store and event streams. Unset: start an embedded Valkey under `data_dir`."""
    celery_broker_url: str | None = None
    """Celery broker (Redis or RabbitMQ). Unset: the same server as `redis_url`."""
    broker_connect_timeout_seconds: float | None = Field(None, gt=0)
    """At start-up, `speechq worker`, `api` and `flower` wait for Redis and the broker, with a log line every
    few seconds; past this many seconds they exit with status 1 naming the URL. Unset: wait as long as it takes."""
    data_dir: Path = Path("var")
    """Embedded Valkey data, assembled model files and other local state."""
    embedded_redis_port: int = Field(0, ge=0, le=65535)
    """Port of the embedded Valkey; 0 picks a free one."""
    redis_maxmemory_mb: int = Field(1_024, ge=0)
    """Memory the embedded Valkey may use (`noeviction`: beyond it writes are refused, the API answers 507);
    0: unlimited."""
    api_host: str = "127.0.0.1"
    api_port: int = Field(6666, ge=1, le=65535)
    console_port: int = Field(6680, ge=0, le=65535)
    """A second port the API also listens on, for browsers: Chromium, Chrome and Firefox refuse 6665–6669
    (the Fetch standard's bad ports), so the console (`/console`) and the docs (`/docs`) open here. Taken:
    one log line, and the API serves on API_PORT alone. 0: off."""
    operator_key_ids: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated key ids (`key_<12 hex>`) that see every key's counts in `GET /v1/queues` and the
    console; other keys see their own. Without API keys everyone is the operator."""
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_basic_auth: SecretStr | None = None
    """`user:password` (comma-separated for several) that Flower asks for; unset: no login."""
    log_level: LogLevel = "INFO"
    log_format: Literal["json", "text"] = "json"
    """JSON lines (with request_id, job_id and owner) or plain text for a terminal."""
    request_id_header: str = "X-Request-ID"
    worker_metrics_port: int = Field(9400, ge=0, le=65535)
    """Each worker serves Prometheus metrics here (one process per GPU: this port + its index); 0: off."""
    cuda_visible_devices: str | None = None
    """The GPUs this process sees, as CUDA reads them (`speechq worker --device` sets it); "" or "-1": none."""
    worker_metrics_host: str = "127.0.0.1"
    """Address the worker metrics listen on (no auth): loopback by default; `0.0.0.0` in containers that
    Prometheus scrapes over a private network."""

    # --- jobs and queues -------------------------------------------------------------------------
    job_ttl_seconds: int = Field(86_400, ge=60)
    """Jobs, their inputs and their events expire this long after creation."""
    job_wait_timeout_seconds: float = Field(600.0, gt=0)
    """How long the blocking endpoints (`/v1/generate`, non-streaming chat) wait for a job."""
    queue_max_depth: int = Field(10_000, ge=0)
    """A queue holding this many messages answers 503 with Retry-After; 0 turns the check off."""
    max_active_jobs_per_key: int = Field(1_000, ge=0)
    """Queued + running jobs one API key (or, without keys, everyone) may have, batch lines included;
    beyond it 429; 0: off."""
    storage_quota_mb_per_key: float = Field(200.0, ge=0)
    """What one API key (or, without keys, everyone) may keep stored: uploaded files, job requests and the
    inputs of unfinished jobs, each counted until it expires or is deleted; beyond it 413; 0: off."""
    max_job_request_kb: int = Field(1_024, ge=0)
    """Largest request a job may store (its JSON, uploaded audio apart); beyond it 413; 0: no cap."""
    task_time_limit_seconds: int = Field(1_800, ge=1)
    """Longest a single job may run before it is stopped and failed."""
    broker_visibility_timeout_seconds: int | None = Field(None, ge=1)
    """Unacked messages of a dead worker are redelivered after this; must exceed the task time limit."""
    broker_restore_interval_seconds: int = Field(10, ge=1)
    """How often workers look for messages of dead workers whose visibility timeout has passed."""
    job_lease_seconds: float = Field(15.0, gt=0)
    """A running job whose worker has not renewed its lease for this long is taken over on redelivery."""
    job_max_attempts: int = Field(3, ge=1)
    """Poison-job cap: after this many deliveries that lost their worker, the job fails."""
    dialogue_concurrency: int = Field(8, ge=1)
    """Dialogues one `dialogue` worker process runs at once; they mostly wait on their stage jobs."""
    worker_heartbeat_seconds: float = Field(5.0, gt=0)
    """How often a worker advertises its queues and loaded models in Redis."""
    worker_drain_seconds: float = Field(60.0, ge=0)
    """A draining worker (SIGTERM, or `POST /v1/workers/{id}/drain`) takes no more jobs and gives the ones it
    runs this long to finish; then it hands them back to the queue, where another worker takes them at once.
    An orchestrator's grace period must be longer (Kubernetes' terminationGracePeriodSeconds)."""
    batch_sweep_interval_seconds: float = Field(1.0, gt=0)
    """How often open batches are brought up to date with their jobs (counts, expiry, output files): every
    API process runs a sweeper, the first to ask in an interval sweeps it. A batch's GET may lag this much."""

    # --- realtime sessions (WS /v1/realtime) --------------------------------------------------------
    max_realtime_sessions_per_key: int = Field(4, ge=0)
    """Realtime sessions one API key (or, without keys, everyone) may hold open at once; 0: no limit."""
    realtime_idle_timeout_seconds: float = Field(600.0, gt=0)
    """A realtime session with no client event and no response under way for this long is closed."""
    realtime_vad_model: Path | None = None
    """The Silero VAD v6 ONNX file realtime sessions detect speech with; unset: the one faster-whisper ships."""
    realtime_max_audio_seconds: float = Field(3_600.0, gt=0)
    """Audio one realtime session may append in all (OpenAI's 15 MiB per event is checked too)."""

    # --- LLM --------------------------------------------------------------------------------------
    models_file: Path | None = None
    """The operator's models (YAML), served beside the built-in catalogue: `name: {role, source, ...}`
    with source a local path or hf://owner/repo/file; `speechq models prepare` fetches them."""
    model_cache_size: int = Field(2, ge=1)
    """Models of each role a worker keeps loaded; beyond it the least recently used idle one is unloaded."""
    llm_model: str = "gemma-3-270m"
    """The default LLM: a registry name, or an absolute path to a .gguf file (registered under that name)."""
    dialogue_model: str = Field("smollm2-135m-instruct", min_length=1, max_length=128)
    """The LLM that answers a spoken conversation (dialogue jobs, `/v1/dialogue` and its WebSocket, realtime
    sessions) whose request names no model: a registered LLM name, checked at start-up like LLM_MODEL. An
    instruct model, because a base model (the default LLM_MODEL) continues text rather than replying to it."""
    llm_models_dir: Path | None = None
    """Where assembled or downloaded GGUF files go; default `<data_dir>/models`."""
    llm_n_ctx: int = Field(4096, ge=128)
    """Context window of each sequence slot (prompt + reply); the KV cache holds LLM_PARALLEL of them."""
    llm_parallel: int = Field(4, ge=1, le=256)
    """Generations one LLM engine decodes together (continuous batching); a worker serving `llm` takes
    this many messages from the queue at once. 1: one generation at a time."""
    llm_n_threads: int | None = Field(None, ge=1)
    """CPU threads for llama.cpp, for decoding and for prompt processing; default: half the cores."""
    llm_n_gpu_layers: int | None = Field(None, ge=-1)
    """Layers offloaded to the GPU; unset: all of them (-1) when llama.cpp was built with GPU support
    and a CUDA device is visible, else none."""
    llm_n_batch: int = Field(512, ge=1)
    """Tokens per decode step, shared by the running generations; longer prompts are prefilled in
    chunks of what is left, so they do not stall the others."""
    llm_stall_seconds: float = Field(120.0, gt=0)
    """A decode step (milliseconds when healthy) still running after this long means llama.cpp is stuck:
    the jobs waiting on it fail with `engine_stalled` and the worker exits with status 75, which
    `speechq up` and `speechq worker` answer by starting it again."""
    llm_max_tokens: int = Field(512, ge=1, le=4096)
    llm_temperature: float = Field(0.7, ge=0.0, le=2.0)
    llm_top_p: float = Field(0.95, gt=0.0, le=1.0)
    llm_top_k: int = Field(40, ge=0)
    llm_repeat_penalty: float = Field(1.1, gt=0.0)
    llm_stream_batch_seconds: float = Field(0.05, ge=0.0, le=1.0)
    """Token deltas arriving within this window after the last `token` event are sent together."""
    llm_preload: bool = True
    """Load the default LLM when a worker serving `llm` starts, so the first job is not slow."""

    # --- speech (used by the stt/tts workers) --------------------------------------------------------
    enable_local_whisper: bool = True
    local_whisper_model: str = "whisper-tiny.en"
    local_whisper_engine: Literal["faster-whisper", "openai-whisper"] = "faster-whisper"
    """faster-whisper (CTranslate2, the default) or openai-whisper (PyTorch `.pt`, optional extra)."""
    openai_api_key: SecretStr | None = None
    openai_api_base: str = "https://api.openai.com/v1"
    openai_whisper_model: str = "whisper-1"
    openai_whisper_response_format: Literal["json", "text", "verbose_json"] = "verbose_json"
    """What speechq asks the remote API for; only verbose_json brings segments, language and duration."""
    openai_timeout_seconds: float = Field(60.0, gt=0)
    openai_max_retries: int = Field(3, ge=0)
    """Retries (with backoff) on 5xx and connection errors of the remote transcription API."""
    stt_n_threads: int | None = Field(None, ge=1)
    """CPU threads for faster-whisper; default: all cores."""
    stt_compute_type: (
        Literal["auto", "int8", "int8_float16", "int8_bfloat16", "int8_float32", "int16", "float16", "bfloat16"]
        | Literal["float32"]
        | None
    ) = None
    """CTranslate2's compute type for faster-whisper; unset: int8 on a CPU, float16 on a GPU."""
    stt_parallel: int = Field(8, ge=1, le=256)
    """Transcriptions a worker runs at once; their chunks decode together, in shared steps."""
    stt_batch_size: int | None = Field(None, ge=1, le=64)
    """Chunks (up to 30 s of speech each) one decoding step takes, from one recording or several; unset: 2 on a
    CPU, 16 on a GPU; 1: every transcription takes faster-whisper's sequential decoder instead."""
    stt_lanes: int | None = Field(None, ge=1, le=64)
    """Decoding steps that run at once, each on STT_N_THREADS ÷ STT_LANES threads; unset: one per core (at most
    4) on a CPU, 1 on a GPU."""
    stt_preload: bool = True
    """Load the default speech-to-text model when a worker serving `stt` starts."""
    audio_decode_timeout_seconds: float = Field(120.0, gt=0)
    """A file that takes longer than this to decode is refused as too complex."""
    tts_model: Literal["hibari", "piper-en_US-joe-medium", "openaudio-s1-mini"] = "hibari"
    """The text-to-speech engine for requests that name none (and for OpenAI's tts-1, tts-1-hd, ...):
    `hibari`, `piper-en_US-joe-medium` (optional extra) or `openaudio-s1-mini` (remote)."""
    tts_n_threads: int = Field(1, ge=1)
    """onnxruntime threads per local TTS engine; one core runs hibari far faster than real time."""
    tts_preload: bool = True
    """Load the default local text-to-speech engine when a worker serving `tts` starts."""
    openaudio_api_base: str = "http://127.0.0.1:8080"
    openaudio_tts_path: str = "/v1/tts"
    openaudio_api_key: SecretStr | None = None
    openaudio_timeout_seconds: float = Field(120.0, gt=0)
    openaudio_max_retries: int = Field(3, ge=0)
    openaudio_default_reference_id: str | None = None
    openaudio_default_format: Literal["wav", "pcm", "mp3"] = "wav"
    openaudio_default_sample_rate: int = Field(44_100, ge=8_000)
    openaudio_default_normalize: bool = True
    openaudio_default_top_p: float = Field(0.8, gt=0.0, le=1.0)
    openaudio_default_chunk_length: int = Field(200, ge=100, le=300)
    max_upload_mb: float = Field(25.0, gt=0)
    max_audio_seconds: float = Field(3_600.0, gt=0)
    audio_seconds_per_key_per_day: float = Field(0.0, ge=0)
    """Seconds of audio one API key (or, without keys, everyone) may send per UTC day; beyond it 429; 0: off."""

    # --- security and limits ----------------------------------------------------------------------
    api_key_enabled: bool = False
    api_key_header_name: str = "X-API-Key"
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    api_key_policies: dict[str, KeyPolicy] = Field(default_factory=dict)
    """JSON: a key's id (`key_<12 hex>`, as its jobs' owner reads; `anonymous` without keys; `*` for every
    other key) -> {"tiers": [...], "default_tier": ..., "weight": ...}. Unset: every key may use every tier,
    defaults to `default`, weight 1."""
    """Comma-separated raw keys or `sha256:<hex>` digests; several at once for rotation."""
    rate_limit_enabled: bool = False
    rate_limit_requests: int = Field(60, ge=1)
    rate_limit_window_seconds: float = Field(60.0, gt=0)
    rate_limit_burst_multiplier: float = Field(1.0, ge=1.0)
    metrics_require_key: bool = False
    """Whether `/metrics` asks for an API key when keys are enabled (Prometheus can send a bearer token)."""
    forwarded_allow_ips: str = ""
    """Proxies whose `X-Forwarded-For`/`-Proto` the API believes (comma-separated IPs or networks, `*` for
    any); empty: none, so a client cannot pick the IP the per-IP rate limit sees."""
    flower_host: str = "127.0.0.1"
    """Where Flower listens. Its task table shows every key's jobs: `speechq up` starts it off loopback
    only with FLOWER_BASIC_AUTH set."""

    # --- webhooks (SPEC §11) -----------------------------------------------------------------------
    webhook_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Comma-separated hosts a `webhook_url` may name: a name (`hooks.example.com`), every name under a
    domain (`*.example.com`), an IP address or a network (`10.1.0.0/16`). A loopback, link-local, private or
    metadata address is reached only when an entry names it as an address or network. Empty: webhooks off."""
    webhook_secret: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Comma-separated Standard Webhooks secrets (`whsec_<base64>`); each delivery is signed with all of
    them, so a receiver can move from one to the next (rotation). Needed when WEBHOOK_ALLOWED_HOSTS is set."""
    webhook_key_secrets: dict[str, list[SecretStr]] = Field(default_factory=dict)
    """JSON: a key's id (`key_<12 hex>`) -> its own secrets, used for its jobs and batches in place of
    WEBHOOK_SECRET."""
    webhook_timeout_seconds: float = Field(5.0, gt=0, le=60)
    """How long one delivery may take, connecting and answering; a receiver slower than this is retried."""
    webhook_retry_hours: float = Field(24.0, gt=0, le=72)
    """How long a delivery that keeps failing (timeouts, connection errors, 5xx, 429) is retried."""
    webhook_backoff_max_seconds: float = Field(3_600.0, ge=1)
    """The longest wait between two tries; waits double from 1 s up to it, each with jitter."""
    webhook_concurrency: int = Field(32, ge=1, le=1_000)
    """Deliveries one API process has under way at once."""

    @model_validator(mode="before")
    @classmethod
    def _split_keys(cls, data: object) -> object:
        if isinstance(data, dict):
            for name in ("api_keys", "webhook_allowed_hosts", "webhook_secret", "operator_key_ids"):
                for spelling in (name, name.upper()):
                    raw = data.get(spelling)
                    if isinstance(raw, str):
                        data[spelling] = [key.strip() for key in raw.split(",") if key.strip()]
        return data

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> Self:
        if self.webhook_allowed_hosts and not self.webhook_secret:
            raise ValueError("WEBHOOK_ALLOWED_HOSTS is set but WEBHOOK_SECRET is not: deliveries must be signed")
        for secret in [*self.webhook_secret, *(s for key in self.webhook_key_secrets.values() for s in key)]:
            value = secret.get_secret_value()
            try:
                decoded = base64.b64decode(value.removeprefix("whsec_"), validate=True)
            except binascii.Error:
                decoded = b""
            if not value.startswith("whsec_") or len(decoded) < 16:
                raise ValueError("a webhook secret must be `whsec_` and at least 16 bytes in base64")
        return self

    @model_validator(mode="after")
    def _visibility_exceeds_time_limit(self) -> Self:
        timeout = self.broker_visibility_timeout_seconds
        if timeout is not None and timeout <= self.task_time_limit_seconds:
            raise ValueError(
                f"BROKER_VISIBILITY_TIMEOUT_SECONDS ({timeout}) must exceed TASK_TIME_LIMIT_SECONDS "
                f"({self.task_time_limit_seconds}), or a running job would be delivered twice"
            )
        return self

    @property
    def visibility_timeout(self) -> int:
        return self.broker_visibility_timeout_seconds or self.task_time_limit_seconds + 60

    @property
    def generation_defaults(self) -> dict[str, object]:
        """What a generation request that leaves these out gets (LLM_MAX_TOKENS, LLM_TEMPERATURE, …)."""
        return {
            "max_tokens": self.llm_max_tokens,
            "temperature": self.llm_temperature,
            "top_p": self.llm_top_p,
            "top_k": self.llm_top_k,
            "repeat_penalty": self.llm_repeat_penalty,
        }

    def key_policy(self, principal: str) -> KeyPolicy:
        """The scheduling policy of API key `principal` (its own entry, else `*`, else the default)."""
        return self.api_key_policies.get(principal) or self.api_key_policies.get("*") or KeyPolicy()

    @property
    def models_dir(self) -> Path:
        return self.llm_models_dir or self.data_dir / "models"

    @property
    def broker_url(self) -> str:
        url = self.celery_broker_url or self.redis_url
        if url is None:
            raise SettingsError("REDIS_URL is not set and no embedded Redis was started")
        return url


def load_settings(**overrides: object) -> Settings:
    """Build `Settings`, turning a validation error into one line per bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            value = error.get("input")
            secret = "KEY" in name or "SECRET" in name or isinstance(value, dict)
            shown = "" if secret else f" (got {value!r})"
            lines.append(f"{name}: {error['msg']}{shown}")
        raise SettingsError("invalid configuration:\n  " + "\n  ".join(lines)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
