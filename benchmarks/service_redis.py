"""The Redis reference of ``service_bench.py``: rows as 256-byte strings, MGET/MSET."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.service_procs import Process, free_port, timed

_POPULATE_BATCH = 65536


class Redis:
    """Rows as 256-byte strings (and Adagrad accumulators under a second key)."""

    def __init__(self, args, workdir: Path, key_batches, grad_batches, binary: str) -> None:
        import redis

        port = free_port()
        cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--dir", str(workdir)]  # fmt: skip
        self.process = Process(cmd, workdir / "redis.log")
        self.r = r = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                r.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        used_before = r.info("memory")["used_memory"]
        rng = np.random.default_rng(1)
        for start in range(0, args.rows, _POPULATE_BATCH):
            keys = np.arange(start, min(args.rows, start + _POPULATE_BATCH), dtype=np.uint64)
            values = rng.standard_normal((keys.size, args.dim)).astype(np.float32) * 0.05
            acc = np.full((keys.size, args.dim), 0.1, dtype=np.float32)
            names = redis_names(keys)
            pipe = r.pipeline(transaction=False)
            pipe.mset(dict(zip(names, [v.tobytes() for v in values], strict=True)))
            pipe.mset(dict(zip([b"a" + n for n in names], [a.tobytes() for a in acc],
                               strict=True)))  # fmt: skip
            pipe.execute()
        self.used_memory_bytes_per_row = (r.info("memory")["used_memory"] - used_before) / args.rows
        self.version = r.info("server")["redis_version"]
        # Key names are built before timing: Redis gets its best case.
        self.name_batches = [redis_names(k) for k in key_batches]
        self.acc_batches = [[b"a" + n for n in names] for names in self.name_batches]
        self.grad_batches = grad_batches
        self.dim = args.dim

    def _lookup(self, names: list[bytes]) -> np.ndarray:
        pipe = self.r.pipeline(transaction=False)
        pipe.mget(names)
        (values,) = pipe.execute()
        return np.frombuffer(b"".join(values), dtype=np.float32).reshape(len(names), self.dim)

    def _push(self, i: int) -> None:
        names, acc_names, grads = self.name_batches[i], self.acc_batches[i], self.grad_batches[i]
        raw = self.r.mget(names + acc_names)
        n = len(names)
        values = np.frombuffer(b"".join(raw[:n]), dtype=np.float32).reshape(n, self.dim)
        acc = np.frombuffer(b"".join(raw[n:]), dtype=np.float32).reshape(n, self.dim)
        acc = acc + grads * grads
        values = values - 0.05 * grads / (np.sqrt(acc) + 1e-10)
        pipe = self.r.pipeline(transaction=False)
        pipe.mset(dict(zip(names, [v.tobytes() for v in values], strict=True)))
        pipe.mset(dict(zip(acc_names, [a.tobytes() for a in acc], strict=True)))
        pipe.execute()

    def lookup(self, seconds: float, min_calls: int) -> np.ndarray:
        return timed(self._lookup, self.name_batches, seconds, min_calls)

    def push(self, seconds: float, min_calls: int) -> np.ndarray:
        return timed(self._push, list(range(len(self.name_batches))), seconds, min_calls)

    def close(self) -> None:
        self.r.close()
        self.process.stop()


def redis_or_reason(args, workdir, key_batches, grad_batches) -> Redis | str:
    if args.no_redis:
        return "skipped (--no-redis)"
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis-server not found on PATH (run `make bench-deps`)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis Python package is not installed"
    return Redis(args, workdir, key_batches, grad_batches, binary)


def redis_names(keys: np.ndarray) -> list[bytes]:
    raw = keys.astype(">u8").tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]
