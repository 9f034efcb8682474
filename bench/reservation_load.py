"""The load side of ``bench_reservations.py``: the engine process, a minimal HTTP client,
the paced usage publisher, the reservation driver and CPU accounting."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
from confluent_kafka import Producer

from demo.simulator import TrafficGenerator, destinations_for
from engine.embedded import free_port
from rating.tariffbook.book import TariffStore

REPO = Path(__file__).resolve().parents[1]
TARIFFS = REPO / "tariffs"
TOKEN = "bench-switch-token"
SOURCE_SWITCH = "bench-switch"


# ---------------------------------------------------------------- the engine


@dataclass
class Engine:
    proc: asyncio.subprocess.Process
    port: int
    log: Path

    @classmethod
    async def start(cls, dsn: str, bootstrap: str, work: Path) -> Engine:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
        env.update({
            "RATING_DATABASE_URL": dsn, "RATING_KAFKA_BOOTSTRAP": bootstrap,
            "RATING_DATA_DIR": str(work / "engine"), "RATING_TARIFFS_DIR": str(TARIFFS),
            "RATING_HTTP_PORT": str(port), "RATING_METRICS_PORT": str(free_port()),
            "RATING_HTTP_HOST": "127.0.0.1", "RATING_SWITCH_TOKEN": TOKEN,
            "RATING_API_TOKEN": "bench-operator", "RATING_PAYMENT_SIMULATION": "succeed",
            # Tuning variables apply as they would to the engine.
            **{k: v for k, v in os.environ.items() if k in (
                "RATING_BATCH_MAX_EVENTS", "RATING_FETCH_MAX_WAIT_MS",
                "RATING_RESERVATION_SECONDS", "RATING_RESERVATION_GRACE_SECONDS")},
        })
        log = work / "engine.log"
        with log.open("ab") as handle:
            proc = await asyncio.create_subprocess_exec(
                str(Path(sys.executable).parent / "rating-engine"), "run", cwd=REPO, env=env,
                stdout=handle, stderr=handle)
        engine = cls(proc, port, log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise engine.failure(f"engine exited with {proc.returncode}")
            with contextlib.suppress(OSError):
                client = await HttpClient.open(port, 1)
                status, _ = await client.request("GET", "/readyz", None)
                await client.close()
                if status == 200:
                    return engine
            await asyncio.sleep(0.5)
        raise engine.failure("engine not ready within 90 s")

    def failure(self, message: str) -> RuntimeError:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return RuntimeError(f"{message}\n--- engine log ---\n{tail}")

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 40)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class HttpClient:
    """Keep-alive HTTP/1.1 connections to 127.0.0.1:port, one request at a time each."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue())
        self._all: list[asyncio.StreamWriter] = []

    @classmethod
    async def open(cls, port: int, connections: int) -> HttpClient:
        client = cls(port)
        for _ in range(connections):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client._all.append(writer)
            client._idle.put_nowait((reader, writer))
        return client

    async def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        reader, writer = await self._idle.get()
        try:
            payload = body or b""
            writer.write(
                f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
        except BaseException:
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
            self._all.append(writer)
            raise
        finally:
            self._idle.put_nowait((reader, writer))
        return status, answer

    async def close(self) -> None:
        for writer in self._all:
            writer.close()


# ---------------------------------------------------------------- (r2) the load


@dataclass
class Timings:
    reserve: list[float] = field(default_factory=list)
    extend: list[float] = field(default_factory=list)
    release: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    answered: int = 0
    first: float = 0.0
    last: float = 0.0

    def count(self, what: str) -> None:
        self.statuses[what] = self.statuses.get(what, 0) + 1


def usage_events(accounts: list[str], tariffs: TariffStore, source: str,
                 seed: int) -> Iterator[tuple[str, bytes]]:
    return TrafficGenerator(accounts, destinations_for(tariffs), source=source, seed=seed)


def publish_paced(bootstrap: str, topic: str, events: Iterator[tuple[str, bytes]],
                  rate_per_s: float, duration_s: float, stop: threading.Event) -> int:
    """Publish at ``rate_per_s`` (librdkafka, a voice switch's defaults), each event
    time-stamped as it is generated."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                         "acks": "all"})
    producer.list_topics(topic, timeout=10)
    sent = 0
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < duration_s and not stop.is_set():
        for key, value in itertools.islice(events, max(0, int(elapsed * rate_per_s) - sent)):
            producer.produce(topic, value=value, key=key.encode())
            sent += 1
        producer.poll(0)
        time.sleep(0.001)
    if producer.flush(30):
        raise RuntimeError("usage publish: events left unsent")
    return sent


async def drive_reservations(client: HttpClient, accounts: list[str], number: str,
                             args: argparse.Namespace, bootstrap: str) -> Timings:
    timings = Timings()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": False,
                         "acks": "all"})
    rnd = random.Random(7)
    run = os.urandom(3).hex()

    async def call(n: int, scheduled: float) -> None:
        account = rnd.choice(accounts)
        base = f"/v1/accounts/{account}/reservations"
        body = orjson.dumps({"source": SOURCE_SWITCH, "call_id": f"{run}-{n}",
                             "service": "call", "destination": number})
        status, answer = await client.request("POST", base, body)
        timings.reserve.append(time.perf_counter() - scheduled)
        timings.count(f"reserve {status}")
        if status != 201:
            return
        rid = orjson.loads(answer)["reservation_id"]
        started = time.perf_counter()
        status, _ = await client.request("POST", f"{base}/{rid}/extend", None)
        timings.extend.append(time.perf_counter() - started)
        timings.count(f"extend {status}")
        await asyncio.sleep(args.hold)
        if n % 2 == 0:  # the call ends with its usage event, final: it settles and closes
            producer.produce(args.topic, key=account.encode(), value=orjson.dumps({
                "specversion": "1.0", "id": f"{run}-{n}-e1", "source": SOURCE_SWITCH,
                "type": "usage.call", "time": datetime.now(UTC).isoformat(),
                "subject": account, "data": {"call_id": f"{run}-{n}", "destination": number,
                                             "from_s": 0, "to_s": 42, "final": True}}))
            producer.poll(0)
            return
        started = time.perf_counter()
        status, _ = await client.request("DELETE", f"{base}/{rid}", None)
        timings.release.append(time.perf_counter() - started)
        timings.count(f"release {status}")

    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()
    timings.first = started
    total = int(args.rate * args.seconds)
    for n in range(total):
        scheduled = started + n / args.rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(call(n, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    timings.last = time.perf_counter()
    timings.answered = len(timings.reserve) + len(timings.extend) + len(timings.release)
    producer.flush(30)
    return timings


@contextlib.contextmanager
def cpu_share(into: dict[str, float], run: str, **pids: int | None) -> Iterator[None]:
    """CPU seconds per wall second of each process tree while the block runs, and of the
    whole machine (``machine``: out of ``os.cpu_count()`` cores)."""
    import psutil

    def cpu(pid: int | None) -> float:
        if pid is None:
            return 0.0
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            total = sum(root.cpu_times()[:2])
            if pid == os.getpid():  # the client alone, not the services it started
                return float(total)
            for child in root.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += sum(child.cpu_times()[:2])
            return float(total)
        return 0.0

    def busy() -> float:  # every process's CPU: the load generators and the OS included
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    before = {name: cpu(pid) for name, pid in pids.items()}
    machine = busy()
    started = time.monotonic()
    yield
    wall = time.monotonic() - started
    for name, pid in pids.items():
        into[f"{run} {name}"] = (cpu(pid) - before[name]) / wall
    into[f"{run} machine"] = (busy() - machine) / wall
