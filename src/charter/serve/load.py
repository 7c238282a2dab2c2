"""Sustained load on a served model: N clients, each with its own official `openai` client, for T seconds.

Each client sends chat completions back to back (alternately streaming and not, over a list of prompts) and
records every request's latency and outcome. A request fails when the client raises, a stream ends without
a finish reason, or a completion comes back without its `charter` object. Used by
`benchmarks/guard.py` and the `load` test.
"""
from __future__ import annotations

import threading
import time


def percentile(xs, q):
    """The sample at rank round(q * (n - 1)) of the sorted `xs` (None when empty): a reported p99 is a
    latency some request really had."""
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_load(base_url: str, model: str, prompts, clients: int = 32, seconds: float = 120.0,
             api_key: str = "none", max_tokens: int = 32, timeout: float = 600.0) -> dict:
    import openai

    lat, errors, lock = [], [], threading.Lock()
    counts = {"ok": 0, "failed": 0, "blocked": 0}
    deadline = time.monotonic() + seconds

    def client(k):
        c = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout)
        i = k
        while time.monotonic() < deadline:
            prompt = prompts[i % len(prompts)]
            stream = i % 2 == 1
            i += clients
            t0 = time.perf_counter()
            try:
                msgs = [{"role": "user", "content": prompt}]
                if stream:
                    finish, charter = None, None
                    for ch in c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens,
                                                        stream=True):
                        charter = charter or (ch.model_extra or {}).get("charter")
                        if ch.choices and ch.choices[0].finish_reason:
                            finish = ch.choices[0].finish_reason
                    if finish is None:
                        raise RuntimeError("stream ended without a finish reason")
                else:
                    r = c.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens)
                    charter = (r.model_extra or {}).get("charter")
                if charter is None:
                    raise RuntimeError("completion without a charter object")
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    counts["ok"] += 1
                    counts["blocked"] += bool(charter.get("blocked"))
            except Exception as e:  # every failure is counted, none stops the client
                with lock:
                    counts["failed"] += 1
                    errors.append(f"{type(e).__name__}: {str(e)[:200]}")

    t_start = time.monotonic()
    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t_start
    return {"clients": clients, "seconds": round(wall, 1), "requests_ok": counts["ok"],
            "requests_failed": counts["failed"], "blocked": counts["blocked"],
            "requests_per_s": round(counts["ok"] / wall, 3) if wall else None,
            "latency_p50_s": round(percentile(lat, 0.5), 3) if lat else None,
            "latency_p99_s": round(percentile(lat, 0.99), 3) if lat else None,
            "max_tokens": max_tokens, "errors": errors[:10]}
