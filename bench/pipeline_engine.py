"""The bare ``UsageConsumer`` subprocess of the pipeline benchmark, seen from the benchmark:
(b) end to end on events already in the topic, and (d) latency at a fixed offered load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_common import (
    REPO,
    SOURCE_LATENCY,
    SOURCE_WARMUP,
    create_topics,
    die_with_parent,
    publish_all,
    publish_paced,
    traffic,
)

from rating.tariffbook.book import TariffStore

CHILD = Path(__file__).resolve().parent / "pipeline_child.py"


@dataclass
class EngineProcess:
    """The engine subprocess, seen from the benchmark."""

    proc: asyncio.subprocess.Process
    log: Path
    lines: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    @classmethod
    async def start(cls, config: dict[str, Any], log: Path,
                    profile: Path | None = None) -> EngineProcess:
        command = [sys.executable, str(CHILD), json.dumps(config)]
        with log.open("ab") as handle:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=REPO, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=handle,
                preexec_fn=die_with_parent)
            if profile is not None:  # sampled from outside; it ends with the engine
                py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
                await asyncio.create_subprocess_exec(
                    py_spy, "record", "--nonblocking", "-r", "250", "-f", "raw",
                    "-o", str(profile), "-p", str(proc.pid), stdout=handle, stderr=handle)
        engine = cls(proc, log)
        asyncio.get_running_loop().create_task(engine._read())
        return engine

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            await self.lines.put(raw.decode().strip())
        await self.lines.put("")

    async def expect(self, prefix: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.lines.get(), max(0.01, remaining))
            except TimeoutError:
                raise self.failure(
                    f"no {prefix!r} from the engine within {timeout_s:.0f} s") from None
            if line.startswith(prefix):
                return line
            if line == "":
                await self.proc.wait()
                raise self.failure(f"engine exited with code {self.proc.returncode}")

    def send_target(self, target: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{target}\n".encode())

    async def result(self, timeout_s: float) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(await self.expect("{", timeout_s))
        await asyncio.wait_for(self.proc.wait(), 30)
        if self.proc.returncode != 0:
            raise self.failure(f"engine exited with code {self.proc.returncode}")
        return stats

    def failure(self, message: str) -> RuntimeError:
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        return RuntimeError(f"{message}\n--- engine log ---\n{tail}")

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()



async def measure_latency(args: argparse.Namespace, accounts: list[str],
                          tariffs: TariffStore, dsn: str, bootstrap: str,
                          work: Path) -> tuple[dict[str, Any], float]:
    topics = await create_topics(bootstrap, "bench.latency")
    config = {"dsn": dsn, "bootstrap": bootstrap, "group": "bench-latency", "target": None,
              "timeout_s": args.seconds + 120, "latency_source": SOURCE_LATENCY,
              "trace": str(work / "latency-trace.txt"), **topics}
    engine = await EngineProcess.start(config, work / "engine-latency.log")
    try:
        # Warm up: the load starts once the consumer holds its partitions and has
        # committed a batch, so the group join is not counted as latency.
        warmup = list(itertools.islice(traffic(accounts, tariffs, SOURCE_WARMUP, seed=4), 200))
        await asyncio.to_thread(publish_all, bootstrap, topics["topic"], warmup)
        await engine.expect("first-commit", timeout_s=60)
        await asyncio.sleep(1.0)
        sent, offered = await asyncio.to_thread(
            publish_paced, bootstrap, topics["topic"],
            traffic(accounts, tariffs, SOURCE_LATENCY, seed=5), args.rate, args.seconds)
        engine.send_target(len(warmup) + sent)
        stats = await engine.result(timeout_s=120)
    finally:
        await engine.close()
    if stats["latency_n"] != sent:
        raise RuntimeError(f"latency run: {stats['latency_n']} of {sent} events timed")
    return stats, offered

