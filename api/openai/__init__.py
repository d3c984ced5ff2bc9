"""OpenAI-compatible endpoints: request/response models in `protocol`, the logic that serves them in `serving`."""
