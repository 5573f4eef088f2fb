"""What the tray says for each snapshot: pure functions, no display needed."""

from __future__ import annotations

import itertools
import time
from dataclasses import replace

from app.api import Mode, Policy, Probe, Snapshot, State
from ui import presentation as p


def test_icon_never_claims_security_the_snapshot_lacks() -> None:
    for state, mode in itertools.product(State, Mode):
        snap = Snapshot(state=state, mode=mode)
        secure = p.icon_name(snap) in p.SECURE_ICONS
        # Secure means: a trusted network, or the VPN carrying the traffic (mode mc).
        assert secure == (state is State.TRUSTED or (state is State.UNTRUSTED
                                                     and mode is Mode.VPN)), (state, mode)
        if mode is Mode.VPN and secure:
            assert p.icon_name(snap) == "trustroam-vpn"  # mc has its own (secure) shape
            assert "through the VPN (mode mc)" in p.headline(snap) or (
                "protected by the VPN (mode mc)" in p.headline(snap))
    assert p.icon_name(None) == "trustroam-not-running"


def test_tooltip_names_addresses_probes_and_binding() -> None:
    snap = Snapshot(state=State.UNTRUSTED, mode=Mode.VPN, profile="corp",
                    home_address="10.20.1.10", care_of_address="203.0.113.5",
                    tunnel_inner_address="10.99.0.7", vpn_gateway="vpn1.corp.example",
                    home_agent_probe=Probe(True, 3.5, 100.0), vpn_probe=Probe(False, 40.0, 90.0),
                    binding_expires=1000.0 + 300)
    tip = p.tooltip(snap, "Cafe (Wi-Fi)")
    for part in ("protected by the VPN (mode mc)", "Network: Cafe (Wi-Fi)",
                 "Home address: 10.20.1.10", "Tunnel inner address: 10.99.0.7",
                 "Home agent: reached through the VPN (registered through it)",
                 "VPN gateway vpn1.corp.example: NOT reachable, last RTT 40.0 ms",
                 "Binding: until " + time.strftime("%H:%M:%S", time.localtime(1300.0))):
        assert part in tip, (part, tip)
    # In mc the TIA is the care-of address the home agent sees: the visited network's
    # address is not shown as one.
    assert "Care-of address" not in tip
    c = p.tooltip(Snapshot(state=State.TRUSTED, mode=Mode.COLOCATED,
                           care_of_address="192.168.7.20"), "")
    assert "Care-of address: 192.168.7.20" in c and "Tunnel inner" not in c
    assert p.tooltip(None, "") == "TrustRoam: TrustRoam service not running"


def test_rfc5266_3_4_1_in_mc_the_tooltip_says_the_ha_is_reached_through_the_vpn() -> None:
    """The helper marks the direct probe unreachable on an untrusted network (it is
    expected to fail there); in mc the registration through the VPN is the proof."""
    mc = Snapshot(state=State.UNTRUSTED, mode=Mode.VPN, profile="corp",
                  home_agent_probe=Probe(False, 3.0, 100.0), binding_expires=1300.0)
    tip = p.tooltip(mc, "")
    assert "Home agent: reached through the VPN (registered through it)" in tip, tip
    assert "NOT reachable" not in tip, tip
    waiting = p.tooltip(replace(mc, binding_expires=0.0), "")
    assert "Home agent: through the VPN, not registered yet" in waiting, waiting
    direct = p.tooltip(replace(mc, mode=Mode.NONE, binding_expires=0.0), "")
    assert "Home agent: NOT reachable, last RTT 3.0 ms" in direct, direct


def test_never_vpn_on_an_untrusted_network_is_blocked_with_the_reason() -> None:
    """The helper refuses the VPN (policy never-vpn): State untrusted (or error) with
    Error; the tray says NOT protected, why, and never shows a secure icon."""
    refused = Snapshot(state=State.UNTRUSTED, mode=Mode.NONE, policy=Policy.NEVER_VPN,
                       error="untrusted network and policy never-vpn: traffic blocked")
    assert p.icon_name(refused) == "trustroam-untrusted"
    assert p.headline(refused) == ("Untrusted network, NOT protected: untrusted network "
                                   "and policy never-vpn: traffic blocked")
    tip = p.tooltip(refused, "")
    assert "Policy: Never use VPN" in tip
    silent = Snapshot(state=State.UNTRUSTED, policy=Policy.NEVER_VPN)
    assert p.headline(silent) == ("Untrusted network, NOT protected: the policy is Never "
                                  "use VPN, so traffic stays blocked")
    as_error = Snapshot(state=State.ERROR, policy=Policy.NEVER_VPN,
                        error="untrusted network and policy never-vpn")
    assert p.icon_name(as_error) == "trustroam-error"
    assert p.headline(as_error) == "Error: untrusted network and policy never-vpn"
    assert p.headline(Snapshot(state=State.UNTRUSTED)) == "Untrusted network, NOT protected"


def test_while_the_gate_is_shut_the_tooltip_says_names_are_refused() -> None:
    """issue 19: lookups fail at once while undecided; the tooltip says why."""
    for shut in (Snapshot(state=State.PROBING), Snapshot(state=State.UNTRUSTED),
                 Snapshot(state=State.ERROR, error="denied 129")):
        assert "Names: refused until the network is decided" in p.tooltip(shut, ""), shut
    for open_ in (Snapshot(state=State.UNTRUSTED, mode=Mode.VPN),
                  Snapshot(state=State.TRUSTED, mode=Mode.COLOCATED), Snapshot()):
        assert "Names:" not in p.tooltip(open_, ""), open_


def test_probe_in_words_without_a_label() -> None:
    """The status window's Home agent / VPN gateway fields (the tooltip adds the name)."""
    assert p.probe_text(Probe()) == "no answer yet"
    assert p.probe_text(Probe(True, 2.04, 100.0)) == "reachable, last RTT 2.0 ms"
    assert p.probe_text(Probe(False, -1.0, 100.0)) == "NOT reachable, last RTT ?"


def test_errors_in_words() -> None:
    assert p.friendly_error("denied by home agent: mobile node failed authentication (131)") \
        == "The home agent refused the key (131): check the profile's key"
    assert p.friendly_error("binding lost: renewals went unanswered\nmore") == \
        "binding lost: renewals went unanswered"


def test_coalescer_one_notice_per_settled_change() -> None:
    c = p.Coalescer()
    assert c.observe(Snapshot()) is None  # the state at start is not news
    assert c.observe(Snapshot(state=State.PROBING)) is None
    assert c.observe(Snapshot(state=State.TRUSTED, mode=Mode.HOME)) == c.SETTLE_S
    n = c.settle()
    assert n is not None and "mode h" in n.text and not n.urgent
    assert c.settle() is None  # nothing new
    c.observe(Snapshot(state=State.PROBING))
    c.observe(Snapshot(state=State.TRUSTED, mode=Mode.HOME))
    assert c.settle() is None  # back where the user last heard: not announced
    c.observe(Snapshot(state=State.UNTRUSTED, mode=Mode.NONE))
    n = c.settle()
    assert n is not None and n.urgent and "NOT protected" in n.text
    c.observe(None)
    n = c.settle()
    assert n is not None and n.text == "TrustRoam service not running"


def test_editor_profile_text_is_what_the_helper_parses() -> None:
    """Every field the editor writes (the [vpn] table included) is read by the
    helper's own parser (app/mn/profile.py, SaveProfile's judge) to the same values;
    an imported helper profile has no key the editor does not know."""
    from app.lab.configs import PROFILE_TOML
    from app.mn import profile
    from ui import profile_model as pm

    values = {**pm.defaults(), "name": "roam", "home_address": "10.20.1.10",
              "home_network": "10.20.1.0/24", "home_agent": "10.20.1.1", "spi": "300",
              "replay": "nonce", "udp_tunnelling": "force",
              "vpn.gateways": "vpn1.corp.example, 192.0.2.7", "vpn.identity": "alice",
              "vpn.auth": "eap-mschapv2", "vpn.dpd_delay": "20", "vpn.intranet": "10.0.0.0/8",
              "vpn.keep_alive_inside": "true", "vpn.ike_proposals": "aes128-sha256-x25519"}
    assert pm.validate(values) == {}
    p = profile.loads(pm.to_toml(values))
    assert p.name == "roam" and p.replay.value == "nonce" and p.udp_tunnelling.value == "force"
    assert p.spi == 300
    assert p.vpn is not None and p.vpn.gateways == ("vpn1.corp.example", "192.0.2.7")
    assert p.vpn.auth.value == "eap-mschapv2" and p.vpn.dpd_delay == 20
    assert p.vpn.keep_alive_inside and str(p.vpn.intranet[0]) == "10.0.0.0/8"
    no_vpn = profile.loads(pm.to_toml({**values, **{k: "" for k in pm.VPN_TEXT_KEYS}}))
    assert no_vpn.vpn is None
    assert pm.from_toml(PROFILE_TOML, "lab")["interface"] == "eth0"
