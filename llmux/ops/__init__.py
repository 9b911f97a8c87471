"""What runs in gunicorn's master: the ``llmux`` command, the gunicorn settings, the admin client.

Nothing here imports Flask, Werkzeug, requests, urllib3 or :mod:`llmux.web`
(checked by ``lint-imports``); the app is built in the worker.
"""
