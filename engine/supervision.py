"""Keeping the engine's components running: a failure that is not an outage restarts
the component after a growing delay; the process exits only when asked to (or on a
configuration it cannot run with, at start-up)."""

from __future__ import annotations

import asyncio
import errno
import faulthandler
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from consumers import metrics
from consumers.retry import Backoff, sleep_unless
from rating.core.errors import describe
from rating.settings import SettingsError

log = logging.getLogger(__name__)
T = TypeVar("T")

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
            log.error("%s failed (%s); restarting it in %.1f s", name, describe(exc), delay,
                      exc_info=exc)
            await sleep_unless(stopping, delay)
            if stopping.is_set():
                return


class StoppedWhileStarting(Exception):
    """Asked to stop before start-up was done: nothing runs yet, nothing to finish."""


async def until_stopped(step: Awaitable[T], stop: asyncio.Event) -> T:
    """``await step``, unless ``stop`` is set first: then ``step`` is cancelled and
    ``StoppedWhileStarting`` raised.

    A start-up step can wait a long time: a consumer group's join waits for a rebalance,
    which a member killed a moment ago holds until the broker gives up on it (minutes).
    SIGTERM must not wait for it.
    """
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise StoppedWhileStarting()


class ShutdownDeadline:
    """Once SIGTERM or Ctrl-C has asked the engine to stop, it is gone within
    ``limit_s`` whatever hangs, and a second signal ends it at once.

    Stopping hard loses nothing (it is what SIGKILL does: the events whose offsets
    were not committed are delivered again, and the ledger keeps each once), but an
    engine that never exits blocks a deployment. Before it goes, it writes where each
    thread and each task was stuck, so the cause can be found.
    """

    def __init__(self, limit_s: float) -> None:
        self._limit_s = limit_s
        self._timer: threading.Timer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def signalled(self, stop: asyncio.Event) -> None:
        """The signal handler: the first signal asks to stop, the next one ends it."""
        if self._timer is not None:
            self._exit("asked again to stop: stopping now, without finishing the batch in"
                       " flight (its events are delivered again)")
        stop.set()
        self._loop = asyncio.get_running_loop()
        self._timer = threading.Timer(self._limit_s, self._expired)
        self._timer.daemon = True
        self._timer.start()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expired(self) -> None:  # on the timer's thread
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # The tasks' stacks are read on the loop's own thread (if it still turns).
            done = threading.Event()
            loop.call_soon_threadsafe(_write_task_stacks, done)
            done.wait(2.0)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        self._exit(f"shutdown did not finish within {self._limit_s:.0f} s (stacks above):"
                   " stopping now (events not committed are delivered again)")

    @staticmethod
    def _exit(reason: str) -> None:
        print(f"rating engine stopped: {reason}", file=sys.stderr, flush=True)
        os._exit(1)


def _write_task_stacks(done: threading.Event) -> None:
    try:
        for task in asyncio.all_tasks():
            print(f"task {task.get_name()}, awaiting:", file=sys.stderr)
            for where in _await_chain(task.get_coro()):
                print(f"  {where}", file=sys.stderr)
        sys.stderr.flush()
    finally:
        done.set()


def _await_chain(coro: object) -> list[str]:
    """Where a task is suspended, outermost first: each coroutine it awaits in turn
    (``Task.print_stack`` shows only the outermost one)."""
    chain: list[str] = []
    while coro is not None and len(chain) < 30:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            chain.append(repr(coro)[:200])
            break
        chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain


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
