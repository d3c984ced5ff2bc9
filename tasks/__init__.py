"""The queue itself: the task registry (`registry.py`), the Celery app (`celery_app.py`), the message envelope
(`envelope.py`) and the scheduler (`scheduler.py`: tiers, fair shares, admission to the broker)."""
