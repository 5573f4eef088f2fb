"""The tray as a desktop user runs it, driven line by line (tests/ui/test_tray_as_user.py).

    python -m tests.ui.user_tray        (as the unprivileged user, on its own session bus)

Prints ``ready <pid>`` once the tray sees the helper, then answers each command on
stdin with one line:

    policy always-vpn   the menu's radio entry triggered (what a click does); answers
                        ``policy <the helper's Policy>`` once the tray shows it
                        checked, or ``problem <what the tray shows>``
    save NAME           the profile editor filled in and saved; ``saved NAME`` or
                        ``not-saved <the editor's message>``
"""

from __future__ import annotations

import asyncio
import os
import sys


async def main() -> None:
    from app.api import Policy
    from ui.tray import Tray

    tray = Tray(ask_secrets=False)
    await tray.start()
    while tray.snapshot is None:
        await asyncio.sleep(0.05)
    print(f"ready {os.getpid()}", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line:
            break
        if line[0] == "policy":
            wanted = Policy(line[1])
            tray.last_problem = ""
            tray.policy_actions[wanted].trigger()
            while True:
                snap = tray.snapshot
                if tray.last_problem:
                    print(f"problem {tray.last_problem}", flush=True)
                    break
                if (snap is not None and snap.policy is wanted
                        and tray.policy_actions[wanted].isChecked()):
                    print(f"policy {snap.policy.value}", flush=True)
                    break
                await asyncio.sleep(0.05)
        elif line[0] == "save":
            tray.show_profiles()
            ed = tray.profile_dialog
            assert ed is not None
            for k, v in (("name", line[1]), ("home_address", "10.20.2.10"),
                         ("home_network", "10.20.2.0/24"), ("home_agent", "10.20.2.1"),
                         ("spi", "300")):
                ed.widgets[k].setText(v)  # type: ignore[union-attr]
            ok = await ed.save()
            print(f"saved {line[1]}" if ok else f"not-saved {ed.message.text()}", flush=True)
    tray.close()


def run() -> None:
    import qasync
    from PySide6.QtWidgets import QApplication

    app = QApplication([])
    app.setQuitOnLastWindowClosed(False)
    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    with loop:
        loop.run_until_complete(main())


if __name__ == "__main__":
    run()
