"""OpenAI's Realtime API on the queue: `WS /v1/realtime` (README, Realtime)."""
