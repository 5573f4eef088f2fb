"""A captive portal on the lab's pub network (optional: ``Lab.up(portal=True)``).

As a hotel's: pub's router (``tr-er``) answers every HTTP request from a client it
has not seen sign in with a redirect to its sign-in page, and drops IKE, NAT-T and
ESP from it, until a form is posted from that client's link-layer (MAC) address.
The rules key on the MAC, as real portals do: a new address from the same card is
still signed in.

``python3 -m app.lab.portal serve LOG`` is the HTTP server (run in ``tr-er``); it
logs one line per request (``client method host path``) to LOG, so tests can see
what reached the portal.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
from pathlib import Path

NODE = "tr-er"
IFACE = "pub"
ADDRESS = "203.0.113.1"
"""The portal's own address: pub's router."""
PAGE = f"http://{ADDRESS}/portal/login"
"""The sign-in page every HTTP request from an unsigned client is sent to."""
SIGNED_PAGE_TEXT = "You are signed in"
FORM_ID = "accept"
"""The id of the form's submit button; it fills the page, so a click anywhere on the
page (the tests' click through the sign-in window) posts the form."""
TABLE = "tr_portal"

RULES = f"""
table inet {TABLE} {{
  set signed {{ type ether_addr; }}
  chain prerouting {{
    type nat hook prerouting priority dstnat;
    # Every HTTP request of an unsigned client reaches the portal, whatever its address.
    iifname "{IFACE}" ether saddr != @signed tcp dport 80 redirect to :80
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    # No VPN until signed in (what makes a portal a trap for a VPN client).
    iifname "{IFACE}" ether saddr != @signed udp dport {{ 500, 4500 }} drop
    iifname "{IFACE}" ether saddr != @signed meta l4proto esp drop
    # HTTPS cannot be redirected without a certificate warning: refused.
    iifname "{IFACE}" ether saddr != @signed tcp dport 443 reject with tcp reset
  }}
}}
"""

PAGE_HTML = f"""<!doctype html>
<html><head><title>Lab Hotel Wi-Fi</title></head>
<body><h1>Welcome to the Lab Hotel</h1>
<form method="post" action="/portal/login">
<input type="hidden" name="terms" value="accepted">
<button id="{FORM_ID}" type="submit" style="position:fixed;left:0;top:0;width:100%;
 height:100%;font-size:32px">Accept and connect</button>
</form></body></html>
"""


def mac_of(ip: str) -> str | None:
    """The link-layer address the router has for a client (its neighbour table)."""
    out = subprocess.run(["ip", "-j", "neigh", "show", ip, "dev", IFACE],
                         capture_output=True, text=True, check=False)
    try:
        for n in json.loads(out.stdout or "[]"):
            if n.get("lladdr"):
                return str(n["lladdr"])
    except ValueError:
        pass
    return None


def sign_in(mac: str) -> None:
    subprocess.run(["nft", "add", "element", "inet", TABLE, "signed", f"{{ {mac} }}"],
                   check=True, capture_output=True)


class _Handler(http.server.BaseHTTPRequestHandler):
    log_path: Path

    def _log(self, what: str) -> None:
        with self.log_path.open("a") as f:
            f.write(f"{self.client_address[0]} {what} {self.headers.get('Host', '')} "
                    f"{self.path}\n")

    def _send(self, code: int, body: str, headers: dict[str, str] | None = None) -> None:
        data = body.encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._log("GET")
        if self.path.startswith("/portal/login"):
            self._send(200, PAGE_HTML)
        else:
            self._send(302, f'<a href="{PAGE}">sign in</a>', {"Location": PAGE})

    def do_POST(self) -> None:
        self._log("POST")
        length = int(self.headers.get("Content-Length", "0") or 0)
        self.rfile.read(min(length, 65536))
        mac = mac_of(self.client_address[0])
        if not self.path.startswith("/portal/login") or mac is None:
            self._send(403, "cannot sign you in")
            return
        sign_in(mac)
        self._send(200, f"<html><body><h1>{SIGNED_PAGE_TEXT}</h1></body></html>")

    def log_message(self, format: str, *args: object) -> None:
        pass  # the request log above is the record


def serve(log_path: Path) -> None:
    _Handler.log_path = log_path
    server = http.server.ThreadingHTTPServer((ADDRESS, 80), _Handler)
    print("portal serving", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "serve":
        print("usage: python3 -m app.lab.portal serve LOG", file=sys.stderr)
        sys.exit(2)
    serve(Path(sys.argv[2]))
