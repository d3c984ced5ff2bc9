"""Media both sides handle: audio intake (probe at the API, decode at the worker) and transcript formats."""
