"""Provider/deployer facts for the evidence report, from a TOML or JSON file.

The file is named by `--config` or HEADWATER_COMPLIANCE_CONFIG; the signing key (a PEM
file) by `--signing-key`, HEADWATER_SIGNING_KEY or the file's `signing_key`. Fields left
out are reported as missing, never filled in.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from headwater.errors import ConfigError
from headwater.query_service.compliance.model import Contact


class ComplianceConfig(BaseModel):
    """What only the provider and deployer know (Art. 13, 26)."""

    model_config = ConfigDict(extra="forbid")

    system_name: str | None = None
    intended_purpose: str | None = None
    provider: str | None = None
    deployer: str | None = None
    human_oversight_contacts: list[Contact] | None = None
    monitoring: str | None = None
    input_data_relevance: str | None = None
    bias_examination: str | None = None  # Art. 10(2)(f): how possible biases were examined
    bias_measures: list[str] | None = None  # Art. 10(2)(g): measures against them
    signing_key: Path | None = None  # relative paths are taken from the file's folder


SYSTEM_FIELDS = ("system_name", "intended_purpose")
DEPLOYMENT_FIELDS = ("provider", "deployer", "human_oversight_contacts", "monitoring",
                     "input_data_relevance")
BIAS_FIELDS = ("bias_examination", "bias_measures")


def missing(config: ComplianceConfig, fields: tuple[str, ...]) -> list[str]:
    """The fields that are unset, blank or empty."""
    out = []
    for name in fields:
        value = getattr(config, name)
        if value is None or (isinstance(value, str | list) and not
                             (value.strip() if isinstance(value, str) else value)):
            out.append(name)
    return out


class ReportSettings(BaseSettings):
    """HEADWATER_COMPLIANCE_CONFIG, HEADWATER_SIGNING_KEY, the trusted report key and the
    witness (file, signing key, trusted public key)."""

    model_config = SettingsConfigDict(env_prefix="HEADWATER_", extra="ignore")

    compliance_config: Path | None = None
    signing_key: Path | None = None
    report_public_key: Path | None = None  # `audit check` trusts reports signed by it
    witness: str | None = None  # the append-only checkpoint file, or a witness's URL
    witness_key: Path | None = None  # Ed25519 private key that signs checkpoints
    witness_public_key: Path | None = None  # `audit verify` trusts checkpoints signed by it
    witness_interval_s: float | None = None  # serve checkpoints this often (None: 300; 0: off)
    witness_tsa_url: str | None = None  # RFC 3161 TSA that timestamps every checkpoint
    witness_tsa_ca_file: Path | None = None  # its root certificate(s): audit verify checks

    @field_validator("witness", mode="before")
    @classmethod
    def _witness_name(cls, value: object) -> object:
        """A file path (str or Path) or a witness endpoint's URL, kept as text (a Path
        would fold a URL's "//")."""
        return str(value) if isinstance(value, Path) else value


def parse_config(text: str, name: str) -> ComplianceConfig:
    """A config from TOML (name ends .toml) or JSON text; errors name the field."""
    toml = name.endswith(".toml")
    try:
        if toml:
            import tomllib  # Python 3.11+
        data = tomllib.loads(text) if toml else json.loads(text)
    except ModuleNotFoundError:
        raise ConfigError(f"compliance config {name}: TOML needs Python 3.11 or later; "
                          "write it as JSON") from None
    except (ValueError, json.JSONDecodeError) as exc:  # TOMLDecodeError is a ValueError
        raise ConfigError(f"compliance config {name}: not valid "
                          f"{'TOML' if toml else 'JSON'}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"compliance config {name}: expected an object of fields")
    try:
        return ComplianceConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"compliance config {name}: field {where}: {first['msg']}") from None


def load_config(path: Path | None = None) -> ComplianceConfig:
    """The config at `path`, else at HEADWATER_COMPLIANCE_CONFIG, else an empty one."""
    path = path or ReportSettings().compliance_config
    if path is None:
        return ComplianceConfig()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compliance config {path} does not exist")
    config = parse_config(path.read_text(), path.name)
    if config.signing_key is not None and not config.signing_key.is_absolute():
        config.signing_key = path.parent / config.signing_key
    return config


def signing_key_path(config: ComplianceConfig, given: Path | None = None) -> Path | None:
    """The PEM to sign with: the option, then HEADWATER_SIGNING_KEY, then the config."""
    return given or ReportSettings().signing_key or config.signing_key
