"""A ready gunicorn config: ``gunicorn -c python:cometmp.integrations.gunicorn_conf -w 4 app:app``.

Set ``COMETMP_DIR`` to the data directory. Everything else comes from the command line.
"""

from cometmp.integrations.gunicorn import (  # noqa: F401
    child_exit,
    nworkers_changed,
    on_exit,
    on_starting,
    post_fork,
    worker_exit,
)
