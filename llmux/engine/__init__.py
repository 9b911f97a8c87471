"""Which model is awake: the switcher, its policy, the hooks and the state file.

Nothing here imports Flask, Werkzeug, requests, urllib3 or another llmux
subpackage (checked by ``lint-imports``, see ``.importlinter``).
"""
