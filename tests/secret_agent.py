# No `from __future__ import annotations`: dbus-fast reads D-Bus signatures from
# the string annotations below.
"""Secret agents as the tray exports them (org.trustroam.SecretAgent1), and one
that never answers."""

import asyncio

from app.api import SECRET_AGENT_INTERFACE
from app.service.bus import ServiceInterface, method


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


class SilentAgent(ServiceInterface):
    """Takes the call and never answers (a hung tray, or a hostile user's agent)."""

    def __init__(self) -> None:
        super().__init__(SECRET_AGENT_INTERFACE)
        self.asked: list[str] = []

    @method()
    async def GetSecrets(self, profile: "s", keys: "as") -> "a{ss}":  # noqa: F722, F821
        self.asked.append(profile)
        await asyncio.Event().wait()
        return {}


class SilentPolkitAgent(ServiceInterface):
    """A polkit authentication agent that never answers (any uid may register one
    for its own process)."""

    def __init__(self) -> None:
        super().__init__("org.freedesktop.PolicyKit1.AuthenticationAgent")
        self.begun = 0

    @method()
    async def BeginAuthentication(self, action_id: "s", message: "s", icon_name: "s",  # noqa: F821
                                  details: "a{ss}", cookie: "s",  # noqa: F722, F821
                                  identities: "a(sa{sv})") -> None:  # noqa: F722
        self.begun += 1
        await asyncio.Event().wait()

    @method()
    def CancelAuthentication(self, cookie: "s") -> None:  # noqa: F821
        pass
