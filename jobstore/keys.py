"""Names of every Redis key speechq writes, in one place."""

PREFIX = "speechq"


LEASES = f"{PREFIX}:leases"  # sorted set: running job id -> when its lease runs out (claims and renewals)


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


def batch_finalizer(batch_id: str) -> str:
    return f"{PREFIX}:batch:{batch_id}:finalizer"


def owner_batches(owner: str) -> str:
    return f"{PREFIX}:owner:{owner}:batches"


def worker(name: str) -> str:
    return f"{PREFIX}:worker:{name}"


WORKER_PATTERN = f"{PREFIX}:worker:*"
