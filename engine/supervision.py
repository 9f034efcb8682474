"""Keeping the engine's components running: a failure that is not an outage restarts
the component after a growing delay; the process exits only when asked to (or on a
configuration it cannot run with, at start-up)."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Awaitable, Callable

from consumers import metrics
from consumers.retry import Backoff, sleep_unless
from rating.settings import SettingsError

log = logging.getLogger(__name__)

# A component that ran this long before failing is considered recovered: its next
# failure waits the shortest delay again.
_HEALTHY_AFTER_S = 60.0


async def keep_running(name: str, run: Callable[[], Awaitable[None]],
                       stopping: asyncio.Event) -> None:
    """Run ``run()`` until it returns, restarting it when it raises (a bug, a lost
    table...), counted in ``rating_component_failures_total`` and logged each time."""
    backoff = Backoff(1.0, 60.0)
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except Exception as exc:
            if stopping.is_set():
                log.warning("%s failed while stopping: %s: %s", name, type(exc).__name__, exc)
                return
            if time.monotonic() - started > _HEALTHY_AFTER_S:
                backoff.reset()
            metrics.COMPONENT_FAILURES.labels(name).inc()
            delay = backoff.next_delay()
            log.error("%s failed (%s: %s); restarting it in %.1f s", name,
                      type(exc).__name__, exc, delay, exc_info=exc)
            await sleep_unless(stopping, delay)
            if stopping.is_set():
                return


def check_listen(host: str, port: int, port_variable: str) -> None:
    """Refuse to start, in one line naming the setting, if ``host:port`` cannot be bound."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SettingsError(f"RATING_HTTP_HOST: cannot listen on {host!r}: {exc}") from None
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise listen_error(host, port, port_variable, exc) from None


def listen_error(host: str, port: int, port_variable: str, exc: OSError) -> SettingsError:
    """The one line for a failure to listen: the port in use, or an unusable address."""
    reason = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE:
        return SettingsError(f"{port_variable}: port {port} on {host} is already in use "
                             "(another engine?)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return SettingsError(f"{port_variable}: not allowed to listen on port {port} "
                             f"({reason})")
    return SettingsError(f"RATING_HTTP_HOST: cannot listen on {host}:{port} ({reason})")
