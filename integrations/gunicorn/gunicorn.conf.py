# gunicorn config for the cometmp example: the hooks are all cometmp needs.
# COMETMP_DIR must name the data directory (or call cometmp.configure() here).
from cometmp.integrations.gunicorn import *  # noqa: F401,F403

bind = "127.0.0.1:8000"
workers = 4
worker_class = "sync"
graceful_timeout = 5
