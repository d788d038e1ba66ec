"""cometmp.otlp_forwarder and ``cometmp forward --otlp``: what is refused before anything
runs, and how a Retry-After header is read. (Shipping is tested against a real collector in
tests/integration/test_otel_pipeline.py.)"""

from __future__ import annotations

import email.utils
import time

import pytest

import cometmp
from cometmp.otlp_forwarder import OtlpForwarder, _retry_after
from cometmp.tools import cli


@pytest.mark.parametrize("endpoint", ["127.0.0.1:4318", "grpc://h:4317", "http://"])
def test_an_endpoint_that_is_not_http_or_https_is_refused_naming_it(data_dir, endpoint):
    with pytest.raises(ValueError, match="OTLP endpoint"):
        OtlpForwarder(data_dir, endpoint)


def test_forward_needs_exactly_one_sink(data_dir, capsys):
    cometmp.Client(data_dir).close()
    assert cli.main(["forward", data_dir]) == cli.EXIT_USAGE
    assert "exactly one sink" in capsys.readouterr().err
    assert cli.main(["forward", data_dir, "--otlp", "http://127.0.0.1:1",
                     "--nats", "nats://127.0.0.1:1", "--stream", "s"]) == cli.EXIT_USAGE
    assert cli.main(["forward", data_dir, "--nats", "nats://127.0.0.1:1"]) == cli.EXIT_USAGE
    assert "--stream" in capsys.readouterr().err
    assert cli.main(["forward", data_dir, "--otlp", "ftp://x"]) == cli.EXIT_USAGE


def test_retry_after_is_read_as_seconds_or_an_http_date():
    assert _retry_after("3") == 3.0
    assert _retry_after(None) is None and _retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50 <= _retry_after(later) <= 61
