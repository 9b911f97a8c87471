"""What llmux reports: Prometheus metrics, log events, the switch history, log setup.

:mod:`llmux.telemetry.logs` also runs in gunicorn's master, so this package's
``__init__`` imports nothing.
"""
