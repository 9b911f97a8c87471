# gunicorn settings for llmux: `gunicorn -c gunicorn.conf.py` (the config file
# comes from $LLMUX_CONFIG) or `llmux serve`, which reads this file when present.
#
# gunicorn's master runs this file before gevent patches anything: import
# nothing heavy here (no flask, requests or urllib3).
from llmux.ops.server import default_bind, gunicorn_settings

globals().update(gunicorn_settings())
bind = [default_bind()]

# Your overrides go below, e.g. a longer grace period for very long streams:
# graceful_timeout = 600
