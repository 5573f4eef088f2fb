"""The Debian packages as a user gets them (issue 21): scripts/build-deb builds
trustroam, trustroam-agents and trustroam-lab once for the module; lintian finds
no errors; the files sit where the system looks; and installed with `apt-get
install ./*.deb` they run, their units verify, the bus takes their policy, and
remove/purge leave what they should.

They are installed into a scratch Debian 12 root (debootstrap + chroot), never
on this machine: the tests here run TrustRoam from the repository, and an
installed copy would put our D-Bus policy into the system bus's and the lab's
policy, the polkit actions beside the lab's, /etc/strongswan.d/trustroam.conf
into every charon the lab starts, and trustroam* on PATH.  The root's packages
are cached in /var/cache/trustroam-test (debootstrap and apt), so a second run
downloads nothing.  Root only (debootstrap, chroot, mounts)."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import app
from tests.requirements import require, require_root

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/trustroam-test")
VENV_SITE = "usr/lib/trustroam/venv/lib/python3.11/site-packages"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
Lintian = tuple[subprocess.Popen[str], Path]  # the running lintian, its output file
BUILD_TOOLS = ("dpkg-buildpackage", "dh", "lintian", "debootstrap", "fakeroot")


def run(*cmd: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], check=True, text=True, capture_output=True)


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    require_root("building and installing the packages needs root")
    missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
    require(not missing, f"{', '.join(missing)} missing (scripts/install-deps --build)")
    out = tmp_path_factory.mktemp("debs")
    done = subprocess.run([ROOT / "scripts" / "build-deb", out], text=True,
                          capture_output=True, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    found = {p.name.split("_")[0]: p for p in out.glob("*.deb")}
    assert set(found) == {"trustroam", "trustroam-agents", "trustroam-lab"}, found
    return found


@pytest.fixture(scope="module")
def lintian(debs: dict[str, Path],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lintian]:
    """lintian (about two minutes on the 60 MB package) runs while the scratch
    root is made; its test, last in the module, reads the result."""
    out = tmp_path_factory.mktemp("lintian") / "out.txt"
    with out.open("w") as fh:
        proc = subprocess.Popen(["lintian", "--fail-on", "error", *map(str, debs.values())],
                                stdout=fh, stderr=subprocess.STDOUT, text=True)
    yield proc, out
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def contents(deb: Path) -> list[str]:
    """The package's paths, without the leading '.', symlinks as 'path -> target'."""
    rows = run("dpkg-deb", "-c", deb).stdout.splitlines()
    return [" ".join(r.split(None, 5)[5:]).removeprefix(".") for r in rows]


# -- the .deb files ------------------------------------------------------------------


def test_files_are_where_the_system_looks(debs: dict[str, Path]) -> None:
    main = set(contents(debs["trustroam"]))
    for path in ("/usr/bin/trustroamd", "/usr/bin/trustroamctl", "/usr/bin/trustroam",
                 "/lib/systemd/system/trustroamd.service",
                 "/lib/systemd/system/trustroam-lockdown.service",
                 "/usr/share/dbus-1/system.d/org.trustroam.Helper1.conf",
                 "/usr/share/dbus-1/system-services/org.trustroam.Helper1.service",
                 "/usr/share/polkit-1/actions/org.trustroam.policy",
                 "/etc/strongswan.d/trustroam.conf",
                 "/usr/lib/tmpfiles.d/trustroam.conf",
                 "/etc/xdg/autostart/trustroam.desktop",
                 "/usr/share/applications/trustroam.desktop",
                 "/usr/share/icons/hicolor/scalable/apps/trustroam.svg",
                 "/usr/share/icons/hicolor/scalable/apps/trustroam-vpn.svg",
                 "/usr/share/doc/trustroam/CHANGELOG.md",
                 "/usr/share/man/man8/trustroamd.8.gz", "/usr/share/man/man1/trustroamctl.1.gz",
                 "/usr/share/man/man1/trustroam.1.gz",
                 f"/{VENV_SITE}/app/net/_fastpath.cpython-311-x86_64-linux-gnu.so",
                 f"/{VENV_SITE}/ui/main.py"):
        assert path in main, path
    agents = set(contents(debs["trustroam-agents"]))
    for path in ("/usr/bin/trustroam-ha", "/usr/bin/trustroam-fa",
                 "/lib/systemd/system/trustroam-ha.service",
                 "/lib/systemd/system/trustroam-fa.service",
                 "/usr/share/man/man8/trustroam-ha.8.gz", "/usr/share/man/man8/trustroam-fa.8.gz",
                 f"/{VENV_SITE}/app/agents/ha_cli.py"):
        assert path in agents, path
    lab = set(contents(debs["trustroam-lab"]))
    assert "/usr/bin/trustroam-lab" in lab
    assert "/usr/share/man/man8/trustroam-lab.8.gz" in lab
    assert f"/{VENV_SITE}/app/lab/cli.py" in lab


def test_app_and_ui_are_never_in_the_systems_site_packages(debs: dict[str, Path]) -> None:
    for deb in debs.values():
        for path in contents(deb):
            if re.search(r"/(site|dist)-packages/(app|ui)(/|$)", path):
                assert path.startswith(f"/{VENV_SITE}/"), path


def test_tray_launcher_runs_with_OO_and_the_others_without(debs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    run("dpkg-deb", "-x", debs["trustroam"], tmp_path)
    run("dpkg-deb", "-x", debs["trustroam-agents"], tmp_path)
    first = {n: (tmp_path / "usr/bin" / n).read_text().splitlines()[0]
             for n in ("trustroam", "trustroamd", "trustroamctl", "trustroam-ha")}
    assert first["trustroam"] == "#!/usr/lib/trustroam/venv/bin/python3 -IOO"
    for name in ("trustroamd", "trustroamctl", "trustroam-ha"):
        assert first[name] == "#!/usr/lib/trustroam/venv/bin/python3 -I", name


def test_package_version_is_the_apps(debs: dict[str, Path]) -> None:
    for deb in debs.values():
        assert run("dpkg-deb", "-f", deb, "Version").stdout.strip() == app.__version__


# -- installed, in a scratch Debian 12 root --------------------------------------------


def _mirror() -> str:
    text = SOURCES.read_text() if SOURCES.exists() else ""
    m = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.M)
    require(m is not None, f"no Debian mirror in {SOURCES}")
    assert m is not None
    return m.group(1)


class Root:
    def __init__(self, path: Path) -> None:
        self.path = path

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"}
        done = subprocess.run(["chroot", str(self.path), "/bin/sh", "-c", script],
                              text=True, capture_output=True, env=env, check=False)
        if check:
            assert done.returncode == 0, f"{script}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.path / path.lstrip("/"))


@pytest.fixture(scope="module")
def root(debs: dict[str, Path], lintian: object,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Root]:
    mirror = _mirror()
    base = Path(tmp_path_factory.mktemp("debroot"))
    tree = base / "root"
    (CACHE / "debootstrap").mkdir(parents=True, exist_ok=True)
    (CACHE / "apt").mkdir(parents=True, exist_ok=True)
    run("debootstrap", "--variant=minbase", f"--cache-dir={CACHE / 'debootstrap'}",
        "bookworm", tree, mirror)
    mounts = []
    try:
        for src, dst in (("/proc", "proc"), ("/dev", "dev"),
                         (str(CACHE / "apt"), "var/cache/apt/archives")):
            (tree / dst).mkdir(parents=True, exist_ok=True)
            run("mount", "--bind", src, tree / dst)
            mounts.append(tree / dst)
        # No service starts inside the scratch root; the host's sources.
        (tree / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        (tree / "usr/sbin/policy-rc.d").chmod(0o755)
        shutil.copy(SOURCES, tree / "etc/apt/sources.list.d/debian.sources")
        (tree / "etc/apt/sources.list").unlink(missing_ok=True)
        shutil.copy("/etc/resolv.conf", tree / "etc/resolv.conf")
        (tree / "debs").mkdir()
        for deb in debs.values():
            shutil.copy(deb, tree / "debs")
        r = Root(tree)
        r.sh("apt-get update -q")
        # systemd for systemd-analyze and systemd-tmpfiles (a desktop has it).
        r.sh("apt-get install -y -q --no-install-recommends systemd "
             "/debs/trustroam_*.deb /debs/trustroam-agents_*.deb /debs/trustroam-lab_*.deb")
        yield r
    finally:
        _end_processes_in(tree)
        for m in reversed(mounts):
            subprocess.run(["umount", "-l", str(m)], check=False)
        if not any(os.path.ismount(m) for m in mounts):
            shutil.rmtree(base, ignore_errors=True)


def test_installed_commands_run(root: Root) -> None:
    out = root.sh("trustroamctl --version").stdout.strip()
    assert out == f"trustroamctl {app.__version__}"
    assert root.sh("dpkg-query -W -f '${Version}' trustroam").stdout == app.__version__
    assert root.sh("trustroam --version").stdout.strip() == f"trustroam {app.__version__}"
    assert "usage: trustroam" in root.sh("trustroam --help").stdout
    assert "usage: trustroamd" in root.sh("trustroamd --help").stdout
    ha = root.sh("cp /usr/share/doc/trustroam-agents/examples/ha.toml /tmp/ha.toml && "
                 "trustroam-ha check --config /tmp/ha.toml").stdout
    assert "OK" in ha
    assert "usage: trustroam-fa" in root.sh("trustroam-fa --help").stdout
    assert "usage: trustroam-lab" in root.sh("trustroam-lab --help").stdout


def test_installed_tray_imports_qt_from_the_private_venv(root: Root) -> None:
    out = root.sh("/usr/lib/trustroam/venv/bin/python3 -IOO -c "
                  "'import PySide6.QtWidgets, qasync, keyring, ui.main, app.net._fastpath; "
                  "print(PySide6.__file__)'").stdout
    assert out.startswith("/usr/lib/trustroam/venv/")


def test_state_directories_exist_after_install(root: Root) -> None:
    assert root.sh("stat -c %a /var/lib/trustroam").stdout.strip() == "700"
    assert root.exists("/etc/trustroam/profiles")
    assert root.exists("/var/lib/trustroam-ha")


def test_systemd_analyze_verify_accepts_the_units(root: Root) -> None:
    done = root.sh("systemd-analyze verify /lib/systemd/system/trustroamd.service "
                   "/lib/systemd/system/trustroam-lockdown.service "
                   "/lib/systemd/system/trustroam-ha.service "
                   "/lib/systemd/system/trustroam-fa.service 2>&1", check=False)
    # Lines about the root's own units (it boots nothing) are not ours.
    ours = [line for line in done.stdout.splitlines() if "trustroam" in line]
    assert done.returncode == 0 and not ours, done.stdout


def _stock_system_bus_conf(root: Root) -> str:
    """Debian's own system bus configuration (its default-deny policy, its system.d
    where ours is, its service directories where our activation file is) on a
    private socket, as root, in the foreground.  Without the setuid launch helper
    the bus starts activated services itself (as root)."""
    conf = (root.path / "usr/share/dbus-1/system.conf").read_text()
    for tag in ("user", "pidfile", "listen", "servicehelper"):
        conf = re.sub(rf"<{tag}>.*?</{tag}>", "", conf, flags=re.S)
    conf = re.sub(r"<(fork|syslog)\s*/>", "", conf)
    conf = conf.replace("<includedir>system.d</includedir>",
                        "<includedir>/usr/share/dbus-1/system.d</includedir>")
    return conf.replace("<type>system</type>", "<type>system</type>\n"
                        "  <listen>unix:path=/tmp/trustroam-test-bus</listen>")


def _on_private_bus(root: Root, script: str) -> str:
    """Runs script with a private system bus in the scratch root.  The bus, and
    so whatever it activates (trustroamd, polkitd), runs in a network namespace
    of its own: nothing started here touches this machine's network."""
    (root.path / "tmp/bus.conf").write_text(_stock_system_bus_conf(root))
    try:
        return root.sh(
            "export DBUS_SYSTEM_BUS_ADDRESS=unix:path=/tmp/trustroam-test-bus\n"
            "unshare -n dbus-daemon --config-file=/tmp/bus.conf --fork --print-pid"
            " --nopidfile >/tmp/bus.pid 2>/tmp/bus.err </dev/null || exit 3\n"
            f"{script}\nrc=$?\nkill $(cat /tmp/bus.pid)\nexit $rc").stdout
    finally:
        _end_processes_in(root.path)


def _end_processes_in(tree: Path, grace: float = 10.0) -> None:
    """The scratch root's processes (a helper or polkitd the bus started) end
    when their bus goes; wait for that, then kill (by pid) any that did not."""
    real = str(tree.resolve())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "root") != real:
                continue
            fd = os.pidfd_open(int(proc.name))
        except OSError:
            continue
        try:
            if not select.select([fd], [], [], grace)[0]:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        finally:
            os.close(fd)


def test_dbus_daemon_takes_the_policy_root_owns_the_name_nobody_does_not(root: Root) -> None:
    req = ("timeout 10 dbus-send --system --print-reply --dest=org.freedesktop.DBus / "
           "org.freedesktop.DBus.RequestName string:org.trustroam.Helper1 uint32:0 2>&1")
    out = _on_private_bus(root, f"echo root: $({req} | tail -n 1)\n"
                          "echo nobody: $(setpriv --reuid=65534 --regid=65534 --clear-groups "
                          f"{req} | tail -n 1)")
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["root"].strip() == "uint32 1", out  # DBUS_REQUEST_NAME_REPLY_PRIMARY_OWNER
    assert "AccessDenied" in lines["nobody"], out


def test_pkaction_lists_the_actions_with_their_defaults(root: Root) -> None:
    out = _on_private_bus(root, "timeout 30 pkaction --verbose --action-id org.trustroam.connect"
                          " && timeout 30 pkaction --verbose --action-id org.trustroam.configure")
    connect, configure = out.split("org.trustroam.configure:")
    assert "implicit active:   yes" in connect and "implicit any:      no" in connect
    assert "implicit active:   auth_admin_keep" in configure


def test_helper_starts_by_dbus_activation_and_serves_status(root: Root) -> None:
    """The installed activation file names the installed helper: the first call
    (trustroamctl status) starts it; it answers; it ends with its bus."""
    out = _on_private_bus(root, "timeout 60 trustroamctl status")
    assert out.startswith("trustroam: offline"), out


# Runs in the booted root at multi-user.target, writes what it saw, powers off.
# systemd offers the shell no event for "restarted": the SIGKILL step polls
# NRestarts (bounded); every other step waits on its own command.
_BOOT_CHECK = r"""[Unit]
After=multi-user.target
[Service]
Type=oneshot
StandardOutput=file:/root/boot-check.txt
StandardError=inherit
ExecStart=/bin/sh -c '\
 echo "at-boot: $(systemctl is-active trustroamd)"; \
 systemctl stop trustroamd; echo "stopped: $(systemctl is-active trustroamd)"; \
 echo "status: $(trustroamctl status | head -n 1)"; \
 echo "activated: $(systemctl is-active trustroamd)"; \
 systemctl kill -s KILL trustroamd; \
 timeout 30 sh -c "until [ \$(systemctl show -p NRestarts --value trustroamd) -ge 1 ]; \
   do sleep 0.2; done"; \
 echo "restarts: $(systemctl show -p NRestarts --value trustroamd)"; \
 echo "after-kill: $(trustroamctl status | head -n 1)"; \
 systemctl stop trustroamd; \
 echo "stop: $(systemctl show -p Result --value trustroamd)"; \
 systemctl start trustroam-ha; echo "ha: $(systemctl is-active trustroam-ha)"; \
 systemctl stop trustroam-ha; echo "ha-stop: $(systemctl show -p Result --value trustroam-ha)"; \
 rm /etc/trustroam/ha.toml; systemctl poweroff'
"""


def test_units_run_under_a_real_systemd(root: Root) -> None:
    """Boots the scratch root with systemd-nspawn (its own network namespace, so
    nothing touches this machine's network): trustroamd runs at boot, starts
    again by D-Bus activation after a stop, is restarted after SIGKILL, stops
    cleanly; trustroam-ha starts and stops."""
    require(shutil.which("systemd-nspawn") is not None,
            "systemd-nspawn missing (scripts/install-deps --build)")
    unit = root.path / "etc/systemd/system/trustroam-boot-check.service"
    wants = root.path / "etc/systemd/system/multi-user.target.wants/trustroam-boot-check.service"
    unit.write_text(_BOOT_CHECK)
    # The sample home agent, its binding cache where the unit lets it write.
    sample = (root.path / "usr/share/doc/trustroam-agents/examples/ha.toml").read_text()
    (root.path / "etc/trustroam/ha.toml").write_text(
        re.sub(r"(?m)^state_dir = .*$", 'state_dir = "/var/lib/trustroam-ha"', sample))
    wants.symlink_to("/etc/systemd/system/trustroam-boot-check.service")
    # nspawn brings its own /dev and /proc: the chroot's bind mounts go meanwhile.
    for sub in ("dev", "proc"):
        run("umount", root.path / sub)
    try:
        boot = subprocess.run(["timeout", "180", "systemd-nspawn", "-D", str(root.path),
                               "--boot", "--register=no", "--keep-unit", "--private-network",
                               "-q"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        check = root.path / "root/boot-check.txt"
        assert check.exists(), f"{boot.returncode}\n{boot.stdout[-3000:]}\n{boot.stderr[-3000:]}"
        out = check.read_text()
    finally:
        for sub in ("proc", "dev"):
            run("mount", "--bind", f"/{sub}", root.path / sub)
        wants.unlink()
        unit.unlink()
    seen = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    assert seen.get("at-boot") == "active", out
    assert seen.get("stopped") == "inactive", out
    assert seen.get("status") == "trustroam: offline", out
    assert seen.get("activated") == "active", out
    assert int(seen.get("restarts", "0")) >= 1, out
    assert seen.get("after-kill") == "trustroam: offline", out
    assert seen.get("stop") == "success", out
    assert seen.get("ha") == "active" and seen.get("ha-stop") == "success", out


def test_remove_keeps_config_and_state_and_purge_leaves_nothing(root: Root) -> None:
    root.sh("echo '# mine' > /etc/trustroam/profiles/mine.toml && "
            "echo '{}' > /var/lib/trustroam/state.json && touch /var/lib/trustroam-ha/b.db")
    root.sh("apt-get remove -y -q trustroam trustroam-agents trustroam-lab")
    for gone in ("/usr/bin/trustroamd", "/usr/bin/trustroam-ha", "/usr/lib/trustroam",
                 "/lib/systemd/system/trustroamd.service",
                 "/usr/share/dbus-1/system.d/org.trustroam.Helper1.conf"):
        assert not root.exists(gone), gone
    for kept in ("/etc/trustroam/profiles/mine.toml", "/var/lib/trustroam/state.json",
                 "/var/lib/trustroam-ha/b.db", "/etc/strongswan.d/trustroam.conf"):
        assert root.exists(kept), kept
    # dpkg, not apt: trustroam-lab has no conffiles, so remove already forgot it.
    root.sh("dpkg --purge trustroam trustroam-agents trustroam-lab")
    for gone in ("/etc/trustroam", "/var/lib/trustroam", "/var/lib/trustroam-ha",
                 "/etc/strongswan.d/trustroam.conf", "/etc/xdg/autostart/trustroam.desktop",
                 "/usr/lib/trustroam", "/usr/share/doc/trustroam",
                 "/etc/systemd/system/dbus-org.trustroam.Helper1.service",
                 "/etc/systemd/system/multi-user.target.wants/trustroamd.service"):
        assert not root.exists(gone), gone
    left = root.sh("dpkg -l 'trustroam*' 2>/dev/null | grep '^[a-z][a-z] ' || true").stdout
    assert not re.search(r"^(ii|rc)", left, re.M), left


def test_lintian_reports_no_errors(lintian: Lintian) -> None:
    proc, out = lintian
    rc = proc.wait()
    text = out.read_text()
    errors = [line for line in text.splitlines() if line.startswith("E:")]
    assert rc == 0 and not errors, "\n".join(errors) or text
