# No `from __future__ import annotations`: dbus-next reads D-Bus signatures from
# the string annotations below.
"""A secret agent as the tray exports it (org.trustroam.SecretAgent1)."""

from dbus_next.service import ServiceInterface, method

from app.api import SECRET_AGENT_INTERFACE


class SecretAgent(ServiceInterface):
    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        super().__init__(SECRET_AGENT_INTERFACE)
        self.secrets = secrets
        self.asked: list[str] = []

    @method()
    def GetSecrets(self, profile: "s", keys: "as") -> "a{ss}":  # noqa: F722, F821
        self.asked.append(profile)
        have = self.secrets.get(profile, {})
        return {k: have[k] for k in keys if k in have}
