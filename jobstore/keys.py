"""Names of every Redis key speechq writes, in one place."""

PREFIX = "speechq"


LEASES = f"{PREFIX}:leases"  # sorted set: running job id -> when its lease runs out (claims and renewals)
QUEUED = f"{PREFIX}:queued"  # sorted set: queued job id -> when the reaper next looks for its message
HUB = f"{PREFIX}:hub"  # never published on: keeps an event hub subscribed while it follows no job


def job(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def events(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def input(job_id: str) -> str:
    """The job's input file (audio), stored as raw bytes beside the job and expiring with it."""
    return f"{PREFIX}:job:{job_id}:input"


def output(job_id: str) -> str:
    """The job's binary result (synthesized audio), stored beside the job and expiring with it."""
    return f"{PREFIX}:job:{job_id}:output"


def notify(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:notify"


def owner_index(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:jobs"


def idempotency(owner: str, key: str) -> str:
    return f"{PREFIX}:idem:{owner}:{key}"


def rate_limit(scope: str) -> str:
    """A rate-limit bucket: `key_<id>` or `ip:<address>`."""
    return f"{PREFIX}:ratelimit:{scope}"


def storage_usage(owner: str) -> str:
    """What the owner keeps in Redis, in bytes per time bucket (STORAGE_QUOTA_MB_PER_KEY)."""
    return f"{PREFIX}:owner:{owner}:storage"


def audio_seconds(owner: str, day: int) -> str:
    """Seconds of audio the owner sent on `day` (days since the epoch), for AUDIO_SECONDS_PER_KEY_PER_DAY."""
    return f"{PREFIX}:owner:{owner}:audio_seconds:{day}"


def active_jobs(owner: str) -> str:
    """The owner's queued and running jobs (pruned lazily), for MAX_ACTIVE_JOBS_PER_KEY."""
    return f"{PREFIX}:owner:{owner}:active"


def conversation(owner: str, conversation_id: str) -> str:
    """A dialogue's history (a list of JSON chat messages), expiring with the job TTL."""
    return f"{PREFIX}:conversation:{owner}:{conversation_id}"


def file(file_id: str) -> str:
    """An uploaded file's metadata (Files API); its bytes are at `file_content`."""
    return f"{PREFIX}:file:{file_id}"


def file_content(file_id: str) -> str:
    return f"{PREFIX}:file:{file_id}:content"


def owner_files(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:files"


def batch(batch_id: str) -> str:
    """A batch (OpenAI Batch API): its state, and in `requests` its lines and the job running each."""
    return f"{PREFIX}:batch:{batch_id}"


OPEN_BATCHES = f"{PREFIX}:batches:open"  # sorted set: id of every batch not yet ended -> its creation time
BATCH_SWEEP_TURN = f"{PREFIX}:batches:sweep"  # set for one sweep interval by the API process sweeping it


def owner_batches(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:batches"


# The webhook outbox (SPEC §11): one record per event, written by the script that ends its job or batch.
WEBHOOKS_DUE = f"{PREFIX}:webhooks:due"  # sorted set: undelivered event id -> when its next try is due
WEBHOOKS_PENDING = f"{PREFIX}:webhooks:pending"  # sorted set: undelivered event id -> when it was made
WEBHOOK_KEEP_SECONDS = 4 * 86_400  # an event's record outlives its longest retry window (WEBHOOK_RETRY_HOURS)


def webhook(event_id: str) -> str:
    """An event's delivery: its URL, body, owner and state (`pending`, `failing`, `delivered`, `failed`)."""
    return f"{PREFIX}:webhook:{event_id}"


def worker(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


WORKER_PATTERN = f"{PREFIX}:worker:*"


def drain(name: str) -> str:
    """Set (by `POST /v1/workers/{id}/drain`) when a worker is to drain; its heartbeat notices within a second."""
    return f"{PREFIX}:drain:{name}"


UNQUEUED = f"{PREFIX}:unqueued"  # what `lua/unqueue.lua` overwrites a taken message with, before removing it


# Jobs created on someone's behalf: a dialogue's stages and a batch's lines run under a sub-owner, so they
# stay out of the key's own job list; what they count against is still the key's (see each caller).
def stage_owner(owner: str) -> str:
    """The owner of a dialogue's stage jobs."""
    return f"{owner}:dialogue"


def batch_owner(owner: str) -> str:
    """The owner of a batch's jobs."""
    return f"{owner}:batch"


def sched(queue: str, part: str) -> str:
    """The scheduler's structures for one queue (`tasks/lua/schedule.lua` names the parts): `tiers`, `vt`,
    `waiting`, `inflight`, `slots`, `service`, `last`, and per tier `<tier>:flows`, `<tier>:weights`, `<tier>:last`,
    `<tier>:p:<principal>` (that principal's waiting jobs, in order)."""
    return f"{PREFIX}:sched:{queue}:{part}"


def lua_functions() -> str:
    """The key builders the Lua scripts use, generated from the ones above so the two never disagree."""
    builders = {"job_key": job, "storage_usage_key": storage_usage, "webhook_key": webhook}
    lines = [f"local {name} = {_lua_string(value)}" for name, value in _LUA_NAMES.items()]
    lines.append(f"local WEBHOOK_KEEP_SECONDS = {WEBHOOK_KEEP_SECONDS}")
    for name, builder in builders.items():
        before, after = builder("\0").split("\0")
        lines.append(f"local function {name}(id) return {_lua_string(before)} .. id .. {_lua_string(after)} end")
    before, middle, after = sched("\0", "\0").split("\0")
    lines.append(
        f"local function sched_key(queue, part) return {_lua_string(before)} .. queue .. {_lua_string(middle)}"
        f" .. part .. {_lua_string(after)} end"
    )
    return "\n".join(lines) + "\n"


_LUA_NAMES = {
    "UNQUEUED": UNQUEUED,
    "QUEUED": QUEUED,
    "WEBHOOKS_DUE": WEBHOOKS_DUE,
    "WEBHOOKS_PENDING": WEBHOOKS_PENDING,
}


def _lua_string(text: str) -> str:
    assert "'" not in text and "\\" not in text and "\n" not in text, "key names are plain"
    return f"'{text}'"
