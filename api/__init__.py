"""The FastAPI front end: routes, auth, SSE/WebSocket relay, metrics. It never imports model code."""
