"""The contract between the API and the workers: Celery app and routing, job store, event log, tasks."""
