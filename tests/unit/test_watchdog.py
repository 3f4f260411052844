"""The one kill-on-timeout every transport uses (``Watchdog``)."""

from __future__ import annotations

import threading
import time

from connectors.transports import Watchdog


def test_fires_once_at_the_deadline() -> None:
    killed: list[float] = []
    started = time.monotonic()
    with Watchdog(lambda: killed.append(time.monotonic()), timeout=0.3) as dog:
        time.sleep(0.6)
    assert dog.fired == "timeout" and dog.killed and len(killed) == 1
    assert 0.25 <= killed[0] - started < 0.55
    dog.kill()  # idempotent
    assert len(killed) == 1


def test_idle_timeout_restarts_on_touch() -> None:
    fired = threading.Event()
    with Watchdog(fired.set, timeout=5, idle=0.3) as dog:
        for _ in range(5):
            time.sleep(0.15)
            dog.touch()
        assert not fired.is_set()
        assert fired.wait(1)
    assert dog.fired == "idle"


def test_disarmed_it_never_fires_and_kill_works_at_once() -> None:
    calls: list[str] = []
    with Watchdog(lambda: calls.append("kill"), timeout=0.2) as dog:
        pass
    time.sleep(0.4)
    assert calls == [] and dog.fired is None and not dog.killed
    with Watchdog(lambda: calls.append("kill"), timeout=60) as early:
        early.kill()
    assert calls == ["kill"] and early.killed and early.fired is None
