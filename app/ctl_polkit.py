"""trustroamctl's polkit authentication agent on its terminal, as systemctl starts one.

On a console or over ssh there is no desktop polkit agent, so a call that needs
the administrator (``SaveProfile``, ``DeleteProfile``...) could not ask for the
password and polkit would refuse it.  Around such a call, when trustroamctl
runs on a terminal, ``pkttyagent --process <our pid>`` is started for this
process only, asking on the terminal where the command was typed (as sudo
does), also on a desktop.  Not ``--fallback`` (systemctl's choice, which lets
a desktop's agent answer instead): polkit did not use such an agent in the lab
(polkit 122, no session).  The call waits until it said it is registered (its
``--notify-fd`` closes); it ends with the call.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator

REGISTER_TIMEOUT = 5.0
"""Seconds pkttyagent has to register (it exits at once when it cannot)."""


def wanted() -> bool:
    """A person at a terminal who is not root (polkit never asks root)."""
    return sys.stdin.isatty() and os.geteuid() != 0


def _start(exe: str, *extra: str) -> subprocess.Popen[bytes] | None:
    """pkttyagent once it registered; None when it could not (it exited)."""
    r, w = os.pipe()
    try:
        agent = subprocess.Popen([exe, "--notify-fd", str(w), *extra,  # noqa: S603
                                  "--process", str(os.getpid())], pass_fds=(w,))
    except OSError:
        os.close(w)
        os.close(r)
        return None
    os.close(w)
    try:
        # EOF when it registered, or gave up.
        while select.select([r], [], [], REGISTER_TIMEOUT)[0] and os.read(r, 64):
            pass
    finally:
        os.close(r)
    try:
        agent.wait(0.05)  # an agent that registered stays: one that exited could not
    except subprocess.TimeoutExpired:
        return agent
    return None


@contextlib.contextmanager
def tty_agent() -> Iterator[None]:
    exe = shutil.which("pkttyagent") if wanted() else None
    agent = None
    if exe is not None:
        agent = _start(exe)
    try:
        yield  # without an agent polkit answers as it would anyway
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(5)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
