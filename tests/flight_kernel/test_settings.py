"""Settings.from_env: defaults, refusals that name the variable, and a token kept out of repr."""

from __future__ import annotations

import pytest

from flight_kernel.settings import ConfigError, Settings

VARIABLES = [
    "KERNEL_HOST",
    "KERNEL_HTTP_PORT",
    "KERNEL_FLIGHT_PORT",
    "KERNEL_AUTH_TOKEN",
    "KERNEL_EXEC_TIMEOUT_S",
    "KERNEL_MAX_STREAM_BYTES",
    "KERNEL_ADVERTISE_LOCATION",
    "KERNEL_LOG_LEVEL",
    "KERNEL_INTERRUPT_GRACE_S",
    "KERNEL_START_TIMEOUT_S",
    "KERNEL_SHUTDOWN_GRACE_S",
]


def test_an_empty_environment_gives_the_defaults():
    settings = Settings.from_env({})
    assert settings == Settings()
    assert (
        settings.host,
        settings.http_port,
        settings.flight_port,
        settings.auth_token,
        settings.exec_timeout_s,
        settings.max_stream_bytes,
        settings.advertise_location,
        settings.log_level,
        settings.interrupt_grace_s,
    ) == ("127.0.0.1", 9999, 8815, None, None, 1024 * 1024, None, "INFO", 5.0)


def test_every_variable_is_read():
    environ = {
        "KERNEL_HOST": "0.0.0.0",
        "KERNEL_HTTP_PORT": "0",
        "KERNEL_FLIGHT_PORT": "65535",
        "KERNEL_AUTH_TOKEN": "t0ken",
        "KERNEL_EXEC_TIMEOUT_S": "2.5",
        "KERNEL_MAX_STREAM_BYTES": "10",
        "KERNEL_ADVERTISE_LOCATION": "grpc://kernel-7.internal:8815",
        "KERNEL_LOG_LEVEL": "debug",
        "KERNEL_INTERRUPT_GRACE_S": "1",
        "KERNEL_START_TIMEOUT_S": "3",
        "KERNEL_SHUTDOWN_GRACE_S": "4",
    }
    assert Settings.from_env(environ) == Settings(
        host="0.0.0.0",
        http_port=0,
        flight_port=65535,
        auth_token="t0ken",
        exec_timeout_s=2.5,
        max_stream_bytes=10,
        advertise_location="grpc://kernel-7.internal:8815",
        log_level="DEBUG",
        interrupt_grace_s=1.0,
        start_timeout_s=3.0,
        shutdown_grace_s=4.0,
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        pytest.param("KERNEL_HTTP_PORT", "abc", id="http-port-not-a-number"),
        pytest.param("KERNEL_HTTP_PORT", "-1", id="http-port-negative"),
        pytest.param("KERNEL_FLIGHT_PORT", "70000", id="flight-port-too-large"),
        pytest.param("KERNEL_FLIGHT_PORT", "88.15", id="flight-port-not-an-int"),
        pytest.param("KERNEL_EXEC_TIMEOUT_S", "-1", id="exec-timeout-negative"),
        pytest.param("KERNEL_EXEC_TIMEOUT_S", "0", id="exec-timeout-zero"),
        pytest.param("KERNEL_EXEC_TIMEOUT_S", "inf", id="exec-timeout-infinite"),
        pytest.param("KERNEL_EXEC_TIMEOUT_S", "nan", id="exec-timeout-nan"),
        pytest.param("KERNEL_MAX_STREAM_BYTES", "0", id="max-stream-bytes-zero"),
        pytest.param("KERNEL_MAX_STREAM_BYTES", "1MiB", id="max-stream-bytes-with-unit"),
        pytest.param("KERNEL_LOG_LEVEL", "loud", id="log-level-unknown"),
        pytest.param("KERNEL_INTERRUPT_GRACE_S", "x", id="interrupt-grace-not-a-number"),
        pytest.param("KERNEL_START_TIMEOUT_S", "-5", id="start-timeout-negative"),
        pytest.param("KERNEL_SHUTDOWN_GRACE_S", "soon", id="shutdown-grace-not-a-number"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable_and_the_value(key, value):
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({key: value})
    assert f"{key!r}" in str(refused.value)
    assert f"{value!r}" in str(refused.value)


def test_a_config_error_is_a_value_error():
    with pytest.raises(ValueError, match="KERNEL_HTTP_PORT"):
        Settings.from_env({"KERNEL_HTTP_PORT": "abc"})


@pytest.mark.parametrize("blank", [pytest.param("", id="empty"), pytest.param("  ", id="spaces")])
@pytest.mark.parametrize("key", VARIABLES)
def test_a_blank_value_keeps_the_default(key, blank):
    assert Settings.from_env({key: blank}) == Settings()


def test_surrounding_spaces_are_ignored():
    assert Settings.from_env({"KERNEL_HTTP_PORT": " 1234 ", "KERNEL_LOG_LEVEL": " warning "}) == (
        Settings(http_port=1234, log_level="WARNING")
    )


def test_the_token_never_appears_in_repr():
    settings = Settings.from_env({"KERNEL_AUTH_TOKEN": "s3cret-t0ken"})
    assert settings.auth_token == "s3cret-t0ken"
    assert "s3cret-t0ken" not in repr(settings)
    assert "s3cret-t0ken" not in str(settings)
