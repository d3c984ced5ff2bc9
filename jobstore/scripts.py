"""The Lua scripts behind every job state transition, each prefixed with the shared prelude."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from jobstore import keys
from tasks.scheduler import lua_constants


@cache
def source(name: str) -> str:
    """The full text of script `name` (a file in `jobstore/lua/`), with the key builders of `keys`, the
    shared prelude and the scheduler (`tasks/lua/schedule.lua`) before it."""
    folder = files("jobstore").joinpath("lua")
    prelude = folder.joinpath("_prelude.lua").read_text()
    schedule = lua_constants() + files("tasks").joinpath("lua", "schedule.lua").read_text()
    return keys.lua_functions() + prelude + "\n" + schedule + "\n" + folder.joinpath(f"{name}.lua").read_text()


# What a worker does to a job it runs; creating and cancelling go through `JobStore`, on either side.
WORKER_SIDE = ("claim", "emit", "renew", "finish", "release", "admit", "drain", "handback")
