"""An engine asked to stop is gone within its deadline, whatever hangs, and says where it hung;
a second signal ends it at once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A process whose shutdown hangs: on SIGTERM it "stops", then waits forever in a task.
_HANGING = """
import asyncio, signal, sys
from engine.supervision import ShutdownDeadline

async def stuck_closing():
    await asyncio.Event().wait()

async def main():
    stop = asyncio.Event()
    deadline = ShutdownDeadline(float(sys.argv[1]))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, deadline.signalled, stop)
    print("ready", flush=True)
    await stop.wait()
    closing = asyncio.create_task(stuck_closing(), name="closing-the-pool")
    await shutting_down()

async def shutting_down():
    await stuck_closing()

asyncio.run(main())
"""


def _start(limit_s: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _HANGING, str(limit_s)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_hanging_shutdown_ends_at_the_deadline_and_shows_where_it_hung() -> None:
    proc = _start(1.0)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert time.monotonic() - started >= 1.0
    assert "shutdown did not finish within 1 s" in err
    assert "task closing-the-pool, awaiting:" in err  # the stuck task, with its stack
    assert "in stuck_closing" in err
    # The main task's whole chain of awaits, down to the stuck line.
    main_task = err.split("task Task-1, awaiting:")[1].split("task ")[0]
    assert main_task.index("in main") < main_task.index("in shutting_down") < main_task.index(
        "in stuck_closing")
    assert "Traceback" not in err.splitlines()[-1]


def test_a_second_signal_stops_at_once() -> None:
    proc = _start(600.0)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None  # still finishing, as asked
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "asked again to stop: stopping now" in err
