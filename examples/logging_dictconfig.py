"""logging.config.dictConfig with cometmp: every worker's records in one stream, as JSON.

    COMETMP_DIR=/tmp/app-log python logging_dictconfig.py
    cometmp tail /tmp/app-log logs --full

docs/INTEGRATIONS.md shows LOGGING verbatim (tests/unit/test_logging_sinks.py checks that
and loads it); gunicorn takes the same dict as ``logconfig_dict`` in its config file.
"""

import logging
import logging.config
import os

DIR = os.environ.get("COMETMP_DIR", "/var/lib/myapp/log")

# --8<-- [start:logging]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "cometmp.logging.JSONFormatter"},
        "text": {"format": "%(levelname)s %(name)s: %(message)s"},
    },
    "handlers": {
        "comet": {                       # one JSON object per record, stream "logs"
            "class": "cometmp.logging.CometHandler",
            "path": DIR,
            "stream": "logs",
            "formatter": "json",         # or "format": "json" instead of a formatter
        },
        "comet_audit": {                 # plain text, its own stream, WARNING and up
            "class": "cometmp.logging.CometHandler",
            "path": DIR,
            "stream": "audit",
            "level": "WARNING",
            "formatter": "text",
            "delay": True,               # opened at its first record
        },
    },
    "loggers": {
        "app.audit": {"handlers": ["comet_audit"], "level": "INFO"},
    },
    "root": {"handlers": ["comet"], "level": "INFO"},
}
# --8<-- [end:logging]


if __name__ == "__main__":
    logging.config.dictConfig(LOGGING)
    logging.getLogger("app").info("started", extra={"version": "1.2.3"})
    logging.getLogger("app.audit").warning("admin %s logged in", "alice")
