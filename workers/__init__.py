"""The Celery service: the app, the queues and task names, the trial-batch message, the task a
worker runs, the worker's heartbeat and janitor, and the retune jobs."""
