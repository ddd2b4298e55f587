"""The saturation phase the HTTP benchmarks share: keep-alive clients sending back to back."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


def closed_loop(target: str, send: Callable[[http.client.HTTPConnection, int], None], seconds: float, threads: int = 8) -> float:
    """`threads` clients, each on its own connection to `target` (http://host:port), call
    `send(conn, i)` back to back for `seconds`, client w with i = w, w + threads, ...; completed
    requests per second."""
    host, port = target.removeprefix("http://").split(":")
    stop = time.perf_counter() + seconds
    counts = [0] * threads

    def client(w: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        i = w
        while time.perf_counter() < stop:
            send(conn, i)
            counts[w] += 1
            i += threads
        conn.close()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(client, range(threads)))
    return sum(counts) / seconds
