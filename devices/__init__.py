"""Device identity: which device class a device belongs to and which stack fingerprint it runs,
the two halves of what a stored configuration is valid for. Imports neither torch (until a GPU is
probed), nor celery, optuna or sqlalchemy: the runtime lookup imports it."""
