"""Run a container image the way a kubelet's runtime would, without a container engine.

The image lives in the buildah storage of testbed/image/buildah.sh (where `make image` puts it).
A run is a throwaway buildah container, mounted (a directory on the host), and the image's
process started in it by util-linux tools:

    unshare --mount --uts --ipc --pid --fork --kill-child   new namespaces; the network stays the
      sh <log>.sh: the mounts, then waits, as PID 1          host's (loopback API server)
        env -i <the container's env>                         nothing of ours leaks in
          setpriv --no-new-privs --clear-groups              allowPrivilegeEscalation: false
            unshare --root=<rootfs> --wd=<workdir>           chroot into the image
                    --setgid=<gid> --setuid=<uid>            the image's (or the pod's) user
              <entrypoint + args>                            PID 2

The image's process is PID 2, not PID 1 as in a pod: changing its UID clears its parent-death
signal, so a SIGKILLed test run would leave it running. The root shell keeps that signal (from
--kill-child) and the namespace's PID 1 role; when it dies the kernel kills every process in
the namespace. Signals reach the image's process directly: it is in the group stop() signals.

Dropping to a non-root UID clears every capability (drop: [ALL]); the bounding set is left as
it is, since it would also take chroot's own capability away, and no_new_privs keeps the process
from gaining any back.

The mounts are a runtime's: /proc of the new PID namespace, a /dev with the usual device nodes,
tmpfs volumes (emptyDir), read-only binds (the ServiceAccount token), then the root itself
remounted read-only (readOnlyRootFilesystem). They live in the private mount namespace and go
with its last process; stop() then removes the buildah container.

Why not `buildah run`: it has no read-only root filesystem, and with chroot isolation it leaves
the stop signal and the namespaces' lifetime to buildah; here SIGTERM reaches the process's own
handler, and every process it forked dies with its PID namespace, as in a pod.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localcluster.processes import ManagedProcess, StartStop

REPO = Path(__file__).resolve().parents[2]
BUILDAH = REPO / "testbed" / "image" / "buildah.sh"
# Device nodes every container runtime provides in /dev (the OCI runtime spec's default list).
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ContainerError(RuntimeError):
    pass


def buildah(
    *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """buildah on the image storage `make image` builds into."""
    result = subprocess.run(
        ["bash", str(BUILDAH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise ContainerError(f"buildah {' '.join(args)} failed: {result.stderr.strip()}")
    return result


@dataclass(frozen=True)
class ImageConfig:
    """What an image's OCI config tells a runtime."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: dict[str, str]
    user: str
    workdir: str
    labels: dict[str, str]

    @classmethod
    def inspect(cls, image: str) -> ImageConfig:
        """The config of `image`; ContainerError when the storage has no such image."""
        result = buildah("inspect", "--type", "image", image, check=False)
        if result.returncode != 0:
            raise ContainerError(
                f"image {image} is not in the buildah storage ({BUILDAH}): {result.stderr.strip()}"
            )
        config = json.loads(result.stdout)["OCIv1"].get("config", {})
        env: dict[str, str] = {}
        for item in config.get("Env") or []:
            key, _, value = str(item).partition("=")
            env[key] = value
        return cls(
            entrypoint=tuple(config.get("Entrypoint") or ()),
            cmd=tuple(config.get("Cmd") or ()),
            env=env,
            user=config.get("User") or "0:0",
            workdir=config.get("WorkingDir") or "/",
            labels=dict(config.get("Labels") or {}),
        )


@dataclass(frozen=True)
class Bind:
    """A host directory or file mounted into the container."""

    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    argv: Sequence[str]
    env: Mapping[str, str]
    uid: int
    gid: int
    workdir: str = "/"
    hostname: str = "container"
    read_only_root: bool = True
    tmpfs: Sequence[str] = ()
    binds: Sequence[Bind] = field(default_factory=tuple)


def resolve_in_root(root: Path, path: str, _depth: int = 0) -> Path:
    """Where `path` of the container is on the host, following symlinks as the container sees
    them (an absolute link like Debian's /var/run -> /run must not lead out to the host's)."""
    if _depth > 40:
        raise ContainerError(f"too many symlinks resolving {path} in {root}")
    parts = [p for p in posixpath.normpath("/" + path).split("/") if p]
    current = root
    for i, part in enumerate(parts):
        candidate = current / part
        if candidate.is_symlink():
            target = os.readlink(candidate)
            inside = "/" + "/".join(parts[:i])
            rest = "/".join(parts[i + 1 :])
            joined = posixpath.join(inside, target, rest)  # an absolute target resets to it
            return resolve_in_root(root, joined, _depth + 1)
        current = candidate
    return current


def home_of(rootfs: Path, uid: int) -> str:
    """The home directory of `uid` in the image's /etc/passwd, else /."""
    try:
        lines = resolve_in_root(rootfs, "/etc/passwd").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == str(uid):
            return fields[5] or "/"
    return "/"


def remove_leftovers(prefix: str) -> list[str]:
    """Remove the buildah containers named `<prefix><pid>` whose process is gone: what a run
    killed with SIGKILL (no stop() ran) leaves behind. Returns their names."""
    names = buildah("containers", "--noheading", "--format", "{{.ContainerName}}").stdout.split()
    removed = []
    for name in names:
        pid = name.removeprefix(prefix)
        if name.startswith(prefix) and pid.isdigit() and not Path(f"/proc/{pid}").exists():
            buildah("rm", name, check=False)
            removed.append(name)
    return removed


def _first_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _host_tool(name: str) -> str:
    found = shutil.which(name, path=_HOST_PATH)
    if found is None:
        raise ContainerError(f"{name} not found (util-linux, mount, hostname are needed)")
    return found


class ContainerProcess(StartStop):
    """One run of `spec.image`; its output goes to `log_path`."""

    def __init__(self, spec: ContainerSpec, log_path: Path, *, name: str) -> None:
        self.spec = spec
        self.log_path = log_path
        self.name = name
        self.container: str | None = None
        self.rootfs: Path | None = None
        self._proc: ManagedProcess | None = None

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        spec = self.spec
        buildah("from", "--pull=never", "--name", self.name, spec.image)
        self.container = self.name
        self.rootfs = Path(buildah("mount", self.name).stdout.strip())
        targets = self._make_mountpoints(self.rootfs)
        env = dict(spec.env)
        # As runc does: HOME from the image's /etc/passwd for the user, else /.
        env.setdefault("HOME", home_of(self.rootfs, spec.uid))
        # The script beside the log, so that the log starts with one short command line.
        script = self.log_path.with_suffix(".sh")
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(self._setup_script(self.rootfs, targets, env) + "\n")
        self._proc = ManagedProcess(
            self.name,
            [
                _host_tool("unshare"),
                "--mount",
                "--propagation=private",
                "--uts",
                "--ipc",
                "--pid",
                "--fork",
                "--kill-child",
                _host_tool("sh"),
                str(script),
            ],
            self.log_path,
            # The tools run on the host's PATH; the image's process gets spec.env alone (env -i
            # in the script: a shell adds variables of its own, such as PWD).
            env={"PATH": _HOST_PATH},
        )

    def _make_mountpoints(self, rootfs: Path) -> dict[str, Path]:
        """Create, in the container's own copy of the image, every path something is mounted
        on (as a runtime does); returns container path -> host path."""
        spec = self.spec
        targets: dict[str, Path] = {}
        for path in ("/proc", "/dev", *spec.tmpfs):
            targets[path] = resolve_in_root(rootfs, path)
            targets[path].mkdir(parents=True, exist_ok=True)
        for bind in spec.binds:
            host = resolve_in_root(rootfs, bind.target)
            if bind.source.is_dir():
                host.mkdir(parents=True, exist_ok=True)
            else:
                host.parent.mkdir(parents=True, exist_ok=True)
                host.touch(exist_ok=True)
            targets[bind.target] = host
        return targets

    def _setup_script(
        self, rootfs: Path, targets: Mapping[str, Path], env: Mapping[str, str]
    ) -> str:
        spec = self.spec
        q = shlex.quote
        mount, hostname = _host_tool("mount"), _host_tool("hostname")
        ln, mkdir = _host_tool("ln"), _host_tool("mkdir")
        root = q(str(rootfs))
        dev = q(str(targets["/dev"]))
        lines = [
            "set -eu",
            # The root a mount of its own, so that it can be remounted read-only at the end.
            f"{mount} --bind {root} {root}",
            f"{mount} -t proc -o nosuid,nodev,noexec proc {q(str(targets['/proc']))}",
            f"{mount} -t tmpfs -o nosuid,mode=755 tmpfs {dev}",
        ]
        for device in _DEVICES:
            lines += [f": > {dev}/{device}", f"{mount} --bind /dev/{device} {dev}/{device}"]
        for i, stream in enumerate(("stdin", "stdout", "stderr")):
            lines.append(f"{ln} -s /proc/self/fd/{i} {dev}/{stream}")
        lines += [
            f"{ln} -s /proc/self/fd {dev}/fd",
            f"{mkdir} {dev}/shm",
            f"{mount} -t tmpfs -o nosuid,nodev,noexec shm {dev}/shm",
        ]
        for path in spec.tmpfs:  # emptyDir volumes
            lines.append(
                f"{mount} -t tmpfs -o nosuid,nodev,mode=1777 tmpfs {q(str(targets[path]))}"
            )
        for bind in spec.binds:
            host = q(str(targets[bind.target]))
            lines.append(f"{mount} --bind {q(str(bind.source))} {host}")
            if bind.read_only:
                lines.append(f"{mount} -o remount,bind,ro,nosuid,nodev {host}")
        lines.append(f"{hostname} {q(spec.hostname)}")
        if spec.read_only_root:
            lines.append(f"{mount} -o remount,bind,ro {root}")
        command = [
            _host_tool("env"),
            "-i",
            *(f"{key}={value}" for key, value in env.items()),
            _host_tool("setpriv"),
            "--no-new-privs",
            "--clear-groups",
            _host_tool("unshare"),
            f"--root={rootfs}",
            f"--wd={spec.workdir}",
            f"--setgid={spec.gid}",
            f"--setuid={spec.uid}",
            "--",
            *spec.argv,
        ]
        # Not exec: this root shell stays PID 1 and waits, so that the namespace dies with it.
        lines += [" ".join(q(arg) for arg in command) + " &", "wait $!"]
        return "\n".join(lines)

    @property
    def pid(self) -> int | None:
        """The image's process (PID 2 of its namespace), as the host sees it."""
        pid = self._proc.pid if self._proc is not None else None
        for _ in ("the namespace's PID 1", "the image's process"):
            if pid is None:
                return None
            pid = _first_child(pid)
        return pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.alive()

    def describe_exit(self) -> str:
        return self._proc.describe_exit() if self._proc else f"{self.name} (not started)"

    def log_tail(self, lines: int = 40) -> str:
        return self._proc.log_tail(lines) if self._proc else "(not started)"

    def stop(self, grace: float = 15) -> None:
        """SIGTERM (PID 1 of the namespace gets it through its own handler), SIGKILL after
        `grace`; then the buildah container goes. Never raises."""
        if self._proc is not None:
            self._proc.stop(grace)
        if self.container is not None:
            for args in (("umount", self.container), ("rm", self.container)):
                result = buildah(*args, check=False)
                if result.returncode != 0:
                    print(f"localcluster: buildah {' '.join(args)}: {result.stderr.strip()}")
            self.container = None
