"""Who may talk to whom: CURVE keys, allow-lists, roles, and the loopback rule.

Rules:
- With keys configured, every ZeroMQ TCP socket is CURVE: encrypted, and both ends proved. The
  controller is a CURVE server on both of its ROUTERs; clients and workers are CURVE clients that
  must know the controller's public key, so a worker obeys only the controller holding the
  matching secret key (anything else fails the handshake and never reaches it).
- The controller admits a client key only if it is in `client_keys_dir` or `admin_keys_dir`,
  and a worker key only if it is in `worker_keys_dir` (checked by a ZAP handler, per socket
  domain). Directories hold public keys as `NAME.key` files; a file added there is honoured from
  the next connection on, no restart needed (removing one does not cut existing connections).
- Roles: ZAP names each connection by its public key (the `User-Id` of every message), and only
  admin keys may UPLOAD or REMOVE models; other clients may INFER, CANCEL, LIST and STATUS.
- Without keys nothing is authenticated, so nothing may listen beyond loopback: a daemon given a
  non-loopback endpoint refuses to start, and says "no keys configured: loopback only".

Keys are made with `clockwork keys generate --out DIR --name NAME` (`generate()` below): it
writes NAME.key (public, to hand out) and NAME.key_secret (mode 0600, to keep).
"""

from __future__ import annotations

import ipaddress
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
CLIENTS_DOMAIN = "clockwork-clients"
WORKERS_DOMAIN = "clockwork-workers"
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NO_KEYS_WARNING = "no keys configured: loopback only"
KEY_ENV = "CLOCKWORK_KEY"  # a client's secret key file
SERVER_KEY_ENV = "CLOCKWORK_SERVER_KEY"  # the controller's public key file


class SecurityError(ValueError):
    """Keys or endpoints that cannot be used as configured (the daemon does not start)."""


# ----------------------------------------------------------------------------- key files


def generate(out_dir: str | os.PathLike, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new key pair as out_dir/NAME.key (public) and out_dir/NAME.key_secret (0600)."""
    if not KEY_NAME.fullmatch(name):
        raise SecurityError(f"key name {name!r}: use letters, digits, '.', '_' or '-'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    public, secret = out / f"{name}{PUBLIC_SUFFIX}", out / f"{name}{SECRET_SUFFIX}"
    if not overwrite and (public.exists() or secret.exists()):
        raise SecurityError(f"{public} or {secret} exists; pick another name or remove them first")
    old_umask = os.umask(0o077)  # the secret is never readable by others, not even briefly
    try:
        zmq.auth.create_certificates(str(out), name)
    finally:
        os.umask(old_umask)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a NAME.key_secret file."""
    public, secret = _load(path)
    if not secret:
        raise SecurityError(f"{path} holds no secret key (give the NAME{SECRET_SUFFIX} file)")
    return public, secret


def load_public(path: str | os.PathLike) -> bytes:
    """The z85 public key in a NAME.key (or NAME.key_secret) file."""
    return _load(path)[0]


def _load(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    try:
        return zmq.auth.load_certificate(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read key file {path}: {exc}") from None


class AllowList:
    """The public keys in some directories (*.key files), re-read when a directory changes."""

    def __init__(self, dirs: Iterable[str]):
        self.dirs = tuple(d for d in dirs if d)
        for d in self.dirs:
            if not os.path.isdir(d):
                raise SecurityError(f"key directory {d} does not exist")
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._keys: frozenset[bytes] = frozenset()
        self.keys()

    def keys(self) -> frozenset[bytes]:
        stamp = tuple(_mtime_ns(d) for d in self.dirs)
        if stamp != self._stamp:
            with self._lock:
                keys: set[bytes] = set()
                for d in self.dirs:
                    keys.update(zmq.auth.load_certificates(d))
                self._keys, self._stamp = frozenset(keys), stamp
        return self._keys

    def __contains__(self, key: bytes) -> bool:
        return key in self.keys()


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


# ----------------------------------------------------------------------------- who holds what


@dataclass(frozen=True)
class CurveClient:
    """What a CURVE client needs: its own key pair and the server's public key."""

    public: bytes
    secret: bytes
    server: bytes


@dataclass(frozen=True)
class ControllerKeys:
    public: bytes
    secret: bytes
    clients: AllowList  # client and admin keys: may connect to the client socket
    admins: AllowList  # may also UPLOAD and REMOVE
    workers: AllowList  # may connect to the worker socket

    def is_admin(self, user_id: str | bytes | None) -> bool:
        if not user_id:
            return False
        return (user_id.encode() if isinstance(user_id, str) else user_id) in self.admins


def controller_keys(secret_key_file: str, client_keys_dir: str, admin_keys_dir: str,
                    worker_keys_dir: str) -> ControllerKeys | None:
    """The controller's keys, or None when no secret key is configured (loopback only)."""
    if not secret_key_file:
        given = [n for n, v in (("client_keys_dir", client_keys_dir), ("admin_keys_dir", admin_keys_dir),
                                ("worker_keys_dir", worker_keys_dir)) if v]
        if given:
            raise SecurityError(f"{', '.join(given)} set but secret_key_file is not: keys need the controller's "
                                "own key pair (clockwork keys generate)")
        return None
    if not worker_keys_dir:
        raise SecurityError("secret_key_file is set but worker_keys_dir is not: no worker could join")
    if not (client_keys_dir or admin_keys_dir):
        raise SecurityError("secret_key_file is set but neither client_keys_dir nor admin_keys_dir: "
                            "no client could connect")
    public, secret = load_secret(secret_key_file)
    return ControllerKeys(public, secret, AllowList([client_keys_dir, admin_keys_dir]),
                          AllowList([admin_keys_dir]), AllowList([worker_keys_dir]))


def client_keys(secret_key_file: str, server_key_file: str, who: str = "client") -> CurveClient | None:
    """A worker's or client's keys, or None when neither file is configured."""
    if not secret_key_file and not server_key_file:
        return None
    if not (secret_key_file and server_key_file):
        raise SecurityError(f"a {who} needs both its own secret key and the controller's public key, "
                            f"got {'only the secret key' if secret_key_file else 'only the server key'}")
    public, secret = load_secret(secret_key_file)
    return CurveClient(public, secret, load_public(server_key_file))


def client_keys_from(key_file: str | None = None, server_key_file: str | None = None,
                     env: Mapping[str, str] | None = None) -> CurveClient | None:
    """A client's keys: the files given, else $CLOCKWORK_KEY (its NAME.key_secret) and
    $CLOCKWORK_SERVER_KEY (the controller's NAME.key); None when neither is set."""
    env = os.environ if env is None else env
    return client_keys(key_file or env.get(KEY_ENV, ""), server_key_file or env.get(SERVER_KEY_ENV, ""))


# ----------------------------------------------------------------------------- sockets


def make_server(sock: zmq.Socket, keys: ControllerKeys, domain: str) -> None:
    """Before bind: CURVE server with our key pair, checked by the ZAP handler of `domain`."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    sock.zap_domain = domain.encode()


def make_client(sock: zmq.Socket, keys: CurveClient) -> None:
    """Before connect: CURVE client proving our key and requiring the server's."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = keys.server


class _Gate:
    """Answers the ZAP handler's "may this key connect?" for one domain, and logs each refused
    key once (a bounded number of them), so an operator sees who knocks with which key."""

    MAX_LOGGED = 1000

    def __init__(self, allowed: AllowList, log: Any):
        self.allowed = allowed
        self.log = log
        self._logged: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.allowed:
            return True
        if self.log is not None and key not in self._logged and len(self._logged) < self.MAX_LOGGED:
            self._logged.add(key)
            self.log.warning("refused a key that is not allowed", domain=domain, key=key.decode())
        return False


class Authenticator:
    """The controller's ZAP handler: one thread answering "may this key connect?" per domain.
    Start it before binding: libzmq lets every CURVE client in when no handler is running."""

    def __init__(self, ctx: zmq.Context, keys: ControllerKeys, log: Any = None):
        self._auth = ThreadAuthenticator(ctx)
        self._auth.start()
        self._auth.configure_curve_callback(CLIENTS_DOMAIN, _Gate(keys.clients, log))
        self._auth.configure_curve_callback(WORKERS_DOMAIN, _Gate(keys.workers, log))

    def stop(self) -> None:
        self._auth.stop()


# ----------------------------------------------------------------------------- at start


def for_controller(config: Any, log: Any) -> ControllerKeys | None:
    """The controller's keys from its config; without any, the loopback rule is enforced and
    the warning logged. Raises SecurityError for a configuration that cannot be served."""
    keys = controller_keys(config.secret_key_file, config.client_keys_dir, config.admin_keys_dir,
                           config.worker_keys_dir)
    if keys is None:
        require_loopback({"client_endpoint": config.client_endpoint, "worker_endpoint": config.worker_endpoint,
                          "metrics_address": config.metrics_address})
        log.warning(NO_KEYS_WARNING, detail="anyone on this host may connect, upload and remove models")
    return keys


def for_worker(config: Any, log: Any) -> CurveClient | None:
    """A worker's keys from its config; as `for_controller`."""
    keys = client_keys(config.secret_key_file, config.controller_public_key_file, "worker")
    if keys is None:
        require_loopback({"controller": config.controller, "metrics_address": config.metrics_address})
        log.warning(NO_KEYS_WARNING, detail="any process on this host could pose as the controller")
    return keys


# ----------------------------------------------------------------------------- loopback rule


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a DNS name: could be anywhere


def is_loopback(endpoint: str) -> bool:
    """True for ZeroMQ endpoints that cannot be reached from another host."""
    transport, sep, rest = endpoint.partition("://")
    if not sep:
        return False
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    address = rest.rpartition(";")[2]  # "tcp://source;destination" connects to destination
    host = address.rpartition(":")[0]
    return is_loopback_host(host)


def require_loopback(endpoints: Mapping[str, str]) -> None:
    """Without keys: every named endpoint (ZeroMQ, or host:port for HTTP) must be loopback."""
    for name, endpoint in endpoints.items():
        if not endpoint:
            continue
        local = is_loopback(endpoint) if "://" in endpoint else is_loopback_host(endpoint.rpartition(":")[0])
        if not local:
            raise SecurityError(f"{name} = {endpoint!r} is not a loopback address and no keys are configured: "
                                f"{NO_KEYS_WARNING}. Generate keys (clockwork keys generate) and set them, "
                                "or use 127.0.0.1")
