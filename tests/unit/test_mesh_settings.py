"""Settings: per-service prefixes, deployment-wide names, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mesh import errors
from router.settings import RouterSettings


def test_service_prefix_and_shared_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_PORT", "6001")
    monkeypatch.setenv("ATHENA_ENV", "dev")
    monkeypatch.setenv("ATHENA_JWT_ISSUER", "https://issuer.example")
    monkeypatch.setenv("PORT", "1")  # an unprefixed variable is not ours
    settings = RouterSettings()
    assert settings.port == 6001
    assert settings.env == "dev"
    assert settings.jwt_issuer == "https://issuer.example"


def test_defaults_follow_the_spec_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTER_PORT", raising=False)
    monkeypatch.delenv("ATHENA_ENV", raising=False)
    settings = RouterSettings()
    assert (settings.port, settings.env) == (50051, "prod")


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_PORT", "70000")
    with pytest.raises(ValidationError):
        RouterSettings()
    monkeypatch.setenv("ROUTER_PORT", "1")
    monkeypatch.setenv("ATHENA_ENV", "staging")
    with pytest.raises(ValidationError):
        RouterSettings()


def test_every_error_has_its_own_status() -> None:
    statuses = [error_type.status for error_type in errors.AthenaError.__subclasses__()]
    assert len(statuses) == len(set(statuses))
    assert errors.STATUS_TYPES["NOT_FOUND"] is errors.NotFound
    invalid = errors.InvalidArgument("text", "must not be empty")
    assert (invalid.field, invalid.message) == ("text", "text: must not be empty")
