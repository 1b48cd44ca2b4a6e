"""What the launcher never writes into user data, EC2 tags or run tags: secret values.

User data is readable by anyone allowed ``ec2:DescribeInstanceAttribute`` and by every process on the
instance through the metadata service, so secrets reach an instance by name only (the launcher's
``secrets``: ``ssm:NAME`` or ``secretsmanager:NAME``, fetched by the bootstrap). These checks refuse a
configuration that would copy a value instead: by the variable's or key's name, and by the value's shape.
Errors name the variable or key and what it looks like, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from receipt_pipeline.core.errors import ExplainedError

# a word of a snake_case or kebab-case name: AWS_SECRET_ACCESS_KEY, DAGSTER_PG_PASSWORD, HF_TOKEN, db-password;
# not TOKENIZERS_PARALLELISM
SECRET_NAME = re.compile(
    r"(?<![a-z0-9])(?:secret|password|passwd|passphrase|token|credentials?|private[_-]key|access[_-]key|api[_-]?key)"
    r"(?![a-z0-9])",
    re.IGNORECASE,
)
SECRET_VALUES = {
    "an AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE),
}
HOW = (
    "secrets never go into user data or tags: put the secret in SSM Parameter Store or Secrets Manager and "
    "name it in the launcher's `secrets` (ENV_VAR: ssm:NAME or secretsmanager:NAME); the instance fetches it"
)


class SecretValueError(ExplainedError, ValueError):
    """A secret value would be written where it must not be; the message names where, never the value."""


def secret_kind(value: str) -> str | None:
    """What a value looks like if it looks like a secret ("an AWS access key id", ...), else None."""
    return next((kind for kind, pattern in SECRET_VALUES.items() if pattern.search(value)), None)


def check_name(name: str, where: str) -> None:
    if SECRET_NAME.search(name):
        raise SecretValueError(f"{where} {name} is named like a secret; {HOW}")


def check_value(name: str, value: str, where: str) -> None:
    kind = secret_kind(str(value))
    if kind:
        raise SecretValueError(f"{where} {name} holds what looks like {kind}; {HOW}")


def check_mapping(values: Mapping[str, str], where: str) -> None:
    """Refuses a secret-like name or value among ``values`` (environment variables, tags)."""
    for name, value in values.items():
        check_name(str(name), where)
        check_value(str(name), str(value), where)


def check_config(config, where: str, path: str = "") -> None:
    """Refuses a literal secret anywhere in a parsed config: a string under a secret-like key (a
    ``{env: NAME}`` reference there is fine) or a string shaped like a secret under any key."""
    if isinstance(config, Mapping):
        for key, value in config.items():
            key_path = f"{path}.{key}" if path else str(key)
            if isinstance(value, str) and SECRET_NAME.search(str(key)):
                raise SecretValueError(f"{where}: {key_path} is a literal secret; use {{env: NAME}} there and {HOW}")
            check_config(value, where, key_path)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            check_config(value, where, f"{path}[{index}]")
    elif isinstance(config, str):
        kind = secret_kind(config)
        if kind:
            raise SecretValueError(f"{where}: {path} holds what looks like {kind}; {HOW}")
