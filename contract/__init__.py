"""What the API and the workers agree on: job kinds and states, requests, results and events, failures, models."""
