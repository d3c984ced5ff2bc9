"""Jobs in Redis: keys, the Lua state transitions, creating and reading jobs, their event logs, files, quotas."""
