"""Test hosts on one machine: network namespaces on a bridge, an sshd in each, torn down whatever happens."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

#: Our own private subnet, only ever inside the namespaces this module creates.
SUBNET = "10.231.77"
BRIDGE = "ictbr0"


def available() -> str | None:
    """None when this host can run the cluster test, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "/usr/sbin/sshd", "ssh", "ssh-keygen"):
        if shutil.which(tool) is None and not Path(tool).exists():
            return f"{tool} is not installed (.ci/run installs iproute2 and openssh-server)"
    return None


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60)


@dataclass
class Host:
    name: str
    ns: str
    address: str
    sshd_pid: int | None = None


@dataclass
class Cluster:
    workdir: Path
    hosts: list[Host] = field(default_factory=list)
    ssh_key: Path | None = None

    def __enter__(self) -> Cluster:
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def _up(self, n: int = 3) -> None:
        self.down()  # leftovers of an interrupted run
        self.workdir.mkdir(parents=True, exist_ok=True)
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        self.ssh_key = self.workdir / "id_ed25519"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.ssh_key))
        hostkey = self.workdir / "hostkey"
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey))
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(Path(f"{self.ssh_key}.pub").read_text())
        os.chmod(authorized, 0o600)
        Path("/run/sshd").mkdir(exist_ok=True)
        for i in range(1, n + 1):
            host = Host(f"h{i}", f"ict-h{i}", f"{SUBNET}.{10 + i}")
            sh("ip", "netns", "add", host.ns)
            sh("ip", "link", "add", f"ict-v{i}", "type", "veth", "peer", "name", f"ict-p{i}")
            sh("ip", "link", "set", f"ict-p{i}", "netns", host.ns)
            sh("ip", "link", "set", f"ict-v{i}", "master", BRIDGE)
            sh("ip", "link", "set", f"ict-v{i}", "up")
            sh("ip", "netns", "exec", host.ns, "ip", "addr", "add", f"{host.address}/24", "dev", f"ict-p{i}")
            sh("ip", "netns", "exec", host.ns, "ip", "link", "set", f"ict-p{i}", "up")
            sh("ip", "netns", "exec", host.ns, "ip", "link", "set", "lo", "up")
            config = self.workdir / f"sshd-{host.name}.conf"
            pid_file = self.workdir / f"sshd-{host.name}.pid"
            config.write_text(f"ListenAddress {host.address}\nPort 22\nHostKey {hostkey}\nPidFile {pid_file}\n"
                              f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n"
                              "PasswordAuthentication no\nStrictModes no\nUsePAM no\n"
                              "Subsystem sftp /usr/lib/openssh/sftp-server\n")
            sh("ip", "netns", "exec", host.ns, "/usr/sbin/sshd", "-f", str(config))
            # sshd creates its pid file before writing the pid: wait for the content, not the file.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not (pid_file.exists() and pid_file.read_text().strip()):
                time.sleep(0.05)
            text = pid_file.read_text().strip() if pid_file.exists() else ""
            host.sshd_pid = int(text) if text.isdigit() else None
            self.hosts.append(host)

    def processes_in(self, ns: str) -> list[int]:
        done = sh("ip", "netns", "pids", ns, check=False)
        return [int(p) for p in done.stdout.split()]

    def down(self) -> None:
        """Kill every process in our namespaces, delete them and the bridge; never raises."""
        listed = sh("ip", "netns", "list", check=False).stdout.split()
        for ns in {n for n in listed if n.startswith("ict-h")}:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                for pid in self.processes_in(ns):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
                time.sleep(0.3)
            sh("ip", "netns", "del", ns, check=False)
        for i in range(1, 10):
            sh("ip", "link", "del", f"ict-v{i}", check=False)
        sh("ip", "link", "del", BRIDGE, check=False)
        self.hosts = []
