"""The kernel backend's probe against the real kernel, in a namespace of its own."""

from __future__ import annotations

import subprocess
import sys

from tests.haproc import env


def test_probe_agrees_with_iproute2():
    subprocess.run(["ip", "netns", "add", "tr-probe"], check=True)
    try:
        with_ip = subprocess.run(["ip", "-n", "tr-probe", "link", "add", "x0", "type", "ipip"],
                                 capture_output=True, check=False).returncode == 0
        code = "from app.net.netlink import Netlink; from app.net.kernel_ipip import " \
               "ipip_supported; n = Netlink(); print(ipip_supported(n)); n.close()"
        out = subprocess.run(["ip", "netns", "exec", "tr-probe", sys.executable, "-c", code],
                             env=env(), capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(with_ip)
    finally:
        subprocess.run(["ip", "netns", "del", "tr-probe"], check=False)
