"""CurveZMQ for infaas: key pairs, the master's authorised-key check (ZAP), and the client/worker side."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from infaas_cli.errors import InfaasError

log = logging.getLogger("infaas.security")

#: A client or CLI finds its keys here when no flag names them.
SECRET_KEY_ENV = "INFAAS_CURVE_SECRET_KEY"
MASTER_PUBLIC_KEY_ENV = "INFAAS_MASTER_PUBLIC_KEY"


class KeyFileError(InfaasError):
    code = "bad_config"


def generate_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public, to hand out) and NAME.key_secret (private, mode 0600) into directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise KeyFileError(f"keys named {name} already exist in {directory}; pick another --name or delete them")
    public_file, secret_file = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def load_keypair(secret_file: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) from a .key_secret file written by `infaas keys generate`."""
    try:
        public, secret = zmq.auth.load_certificate(str(secret_file))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the key pair in {secret_file}: {exc}; create one with `infaas keys generate`") \
            from None
    if secret is None:
        raise KeyFileError(f"{secret_file} holds no secret key; pass the .key_secret file, not the public .key")
    return public, secret


def load_public_key(public_file: str | Path) -> bytes:
    try:
        public, _ = zmq.auth.load_certificate(str(public_file))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the public key in {public_file}: {exc}") from None
    return public


class AuthorisedKeys:
    """The public keys in a directory; re-read when it changes, so keys can be added without a restart."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise KeyFileError(f"--authorized-keys {self.directory} is not a directory of .key files")
        self._stamp: tuple = ()
        self._keys: dict[bytes, str] = {}

    def _refresh(self) -> None:
        files = sorted(self.directory.glob("*.key"))
        stamp = tuple((f.name, f.stat().st_mtime_ns) for f in files)
        if stamp != self._stamp:
            keys = {}
            for f in files:
                try:
                    keys[load_public_key(f)] = f.stem
                except KeyFileError as exc:
                    log.warning("ignoring %s: %s", f, exc)
            self._keys, self._stamp = keys, stamp

    def callback(self, domain: str, client_key: bytes) -> bool:
        self._refresh()
        name = self._keys.get(client_key)
        if name is None:
            log.warning("refused a CurveZMQ peer: public key %s is not among the authorised keys in %s",
                        client_key.decode(errors="replace"), self.directory)
            return False
        log.debug("accepted CurveZMQ peer %s", name)
        return True


def start_authenticator(ctx: zmq.Context, authorised_dir: str | Path) -> ThreadAuthenticator:
    """The ZAP handler that checks every CURVE handshake against the authorised keys."""
    keys = AuthorisedKeys(authorised_dir)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=keys)
    return auth


def make_server(sock: zmq.Socket, secret_file: str | Path) -> None:
    public, secret = load_keypair(secret_file)
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_server = True


def make_client(sock: zmq.Socket, secret_file: str | Path, server_public_file: str | Path) -> None:
    public, secret = load_keypair(secret_file)
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_serverkey = load_public_key(server_public_file)


def client_keys_from_env(secret_file: str | Path | None = None,
                         master_public_file: str | Path | None = None) -> tuple[str, str] | None:
    """The (secret key file, master public key file) pair from the arguments, else from the settings
    (security.curve_secret_key / security.master_public_key: $INFAAS_CURVE_SECRET_KEY, the config files);
    both or none."""
    if secret_file is None or master_public_file is None:
        from infaas_cli.settings import load_settings

        security = load_settings()[0].security
        secret_file = secret_file or security.curve_secret_key
        master_public_file = master_public_file or security.master_public_key
    if bool(secret_file) != bool(master_public_file):
        raise KeyFileError(f"CurveZMQ needs both a secret key (security.curve_secret_key, {SECRET_KEY_ENV}) and the "
                           f"master's public key (security.master_public_key, {MASTER_PUBLIC_KEY_ENV}); only one is set")
    return (str(secret_file), str(master_public_file)) if secret_file else None
