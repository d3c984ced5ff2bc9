"""The original synchronous Gemma 3 Speech API's request and answer shapes, and how its requests read: one module
per capability (generation, speech, dialogue). The routes that serve them are in `api/routes/`."""
