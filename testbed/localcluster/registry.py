"""A real OCI distribution registry on loopback: Debian's `docker-registry` (distribution 2.8).

    with Registry(tmp_path / "registry") as registry:
        publish(registry.host, "filters/x", "v1", wasm, "oci-wasm")

Plain HTTP on 127.0.0.1:<free port>, blobs on the filesystem under the workdir, deletes enabled,
and optionally HTTP basic auth from an htpasswd file (bcrypt). The config file is written from
scratch every start and REGISTRY_* variables are dropped from the child's environment: the
registry lets those override any config key, and a stray one (say REGISTRY_HTTP_ADDR=:5000)
would make it listen on every interface.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt

from localcluster.errors import ClusterStartError
from localcluster.network import LOOPBACK
from localcluster.processes import LoopbackDaemon, ManagedProcess

DEFAULT_BINARY = Path("/usr/bin/docker-registry")
_INSTALL_HINT = (
    "install it with `apt-get install docker-registry` (Debian/Ubuntu, distribution 2.8)"
)
# bcrypt cost of the htpasswd entry. The registry checks the password on every request, so the
# default cost (12, ~0.25s of CPU each) would make a push of a few blobs take seconds. 4 is
# the minimum Go's bcrypt accepts; these are throwaway test credentials.
_BCRYPT_ROUNDS = 4
_INSTANCE_HEADER = "X-Testbed-Registry"
# Probes go straight to loopback, whatever proxy the environment names.
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RegistryError(ClusterStartError):
    """The registry binary is missing, or the registry did not come up; carries its log tail."""


def find_binary(binary: Path | None = None) -> Path:
    """The docker-registry executable (explicit path, /usr/bin, or PATH), or a clear error."""
    if binary is not None:
        candidates = [Path(binary)]
    else:
        on_path = shutil.which("docker-registry")
        candidates = [DEFAULT_BINARY, *([Path(on_path)] if on_path else [])]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise RegistryError(f"docker-registry binary not found (looked at {tried}); {_INSTALL_HINT}")


def htpasswd_line(username: str, password: str) -> str:
    """One htpasswd entry with a bcrypt hash, the only hash distribution's htpasswd accepts."""
    if ":" in username:
        raise ValueError("an htpasswd username cannot contain ':'")
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=_BCRYPT_ROUNDS))
    return f"{username}:{hashed.decode()}\n"


class Registry(LoopbackDaemon):
    """One docker-registry process on 127.0.0.1, its config, storage and log under `workdir`.

    Use as a context manager, or call start() and stop(). For starting alongside other
    processes (as LocalCluster does) call spawn(), poll ready(), and stop the process it
    returns; stop() is then still safe to call.
    """

    ready_path = "/v2/"
    error = RegistryError
    start_timeout = 30.0

    def __init__(
        self,
        workdir: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        name: str = "registry",
        binary: Path | None = None,
        log_path: Path | None = None,
        port: int | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.workdir = Path(workdir).resolve()
        self.name = name
        self.username = username
        self.password = password
        super().__init__(port)
        self._binary = binary
        self.log_path = log_path if log_path is not None else self.workdir / f"{name}.log"
        # Sent back by this process alone on every response (config http.headers), so that a
        # readiness probe cannot mistake another server that holds the port for ours.
        self._instance = secrets.token_hex(8)

    # -- public surface -------------------------------------------------------------------

    @property
    def host(self) -> str:
        """host:port, as it goes into an image reference (127.0.0.1:PORT/repo:tag)."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def auth(self) -> tuple[str, str] | None:
        """(username, password) if this registry requires basic auth, else None."""
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.yml"

    def spawn(self) -> ManagedProcess:
        """Write config (and htpasswd) and start the process; does not wait for it."""
        self._claim_port()
        binary = find_binary(self._binary)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        htpasswd: Path | None = None
        if self.username is not None and self.password is not None:
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text(htpasswd_line(self.username, self.password))
            htpasswd.chmod(0o600)
        self.config_path.write_text(self._config(htpasswd))
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self._process = ManagedProcess(
            self.name,
            [str(binary), "serve", str(self.config_path)],
            self.log_path,
            env=env,
            cwd=self.workdir,
        )
        return self._process

    def ready(self) -> bool:
        """Our process answers /v2/ as it should: 200, or 401 with a Basic challenge when
        auth is on."""
        if self._process is None or not self._process.alive():
            return False
        try:
            with _NO_PROXY.open(f"{self.url}/v2/", timeout=2) as resp:
                status, headers = resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            with exc:
                status, headers = exc.code, exc.headers
        except OSError:
            return False
        if headers.get(_INSTANCE_HEADER) != self._instance:
            return False
        if self.auth is None:
            return bool(status == 200)
        challenge = str(headers.get("WWW-Authenticate", ""))
        return status == 401 and challenge.startswith("Basic")

    def basic_auth_header(self) -> dict[str, str]:
        """{"Authorization": "Basic ..."} for this registry's credentials ({} without auth)."""
        if self.auth is None:
            return {}
        token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    # -- internals -------------------------------------------------------------------------

    def _config(self, htpasswd: Path | None) -> str:
        # JSON is YAML, and json.dumps quotes every path and value safely.
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "fields": {"service": self.name}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                # No background upload purging: nothing here lives long enough to need it.
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": f"{LOOPBACK}:{self.port}",
                # A fixed secret per registry; without one it logs a warning and makes one up.
                "secret": secrets.token_hex(16),
                "headers": {
                    "X-Content-Type-Options": ["nosniff"],
                    _INSTANCE_HEADER: [self._instance],
                },
            },
            # The storage-driver health check would add a periodic probe for nothing.
            "health": {"storagedriver": {"enabled": False}},
        }
        if htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": self.name, "path": str(htpasswd)}}
        return json.dumps(config, indent=2) + "\n"
