"""The worker's HTTP side: the Flask app, the client requests and the backend connections.

Imported only in gunicorn's worker, after gevent patched everything; never by
:mod:`llmux.ops` (checked by ``lint-imports``).
"""
