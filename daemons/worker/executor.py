"""A loaded variant on a worker: its queue, its replicas (one session and executor thread each), its batching.

Executor threads hand finished frames back to the worker's loop over an inproc PUSH socket, so
the master socket is only ever touched by the loop thread.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from infaas_cli import protocol
from infaas_cli.backends import pads_to_max_batch
from infaas_cli.policy.batching import next_batch, run_inline, update_arrival_gap
from infaas_cli.protocol.messages import ResultBody, VariantMetrics, VariantSpec
from infaas_cli.settings import WorkerSettings

_RESULT, _LOADER = b"R", b"L"  # tags on the inproc channel: forward as-is, or for the loop itself


@dataclass
class QueuedQuery:
    """A query waiting for its variant; batching (infaas_cli.policy.batching) reads batch, shape_key,
    deadline_s and arrived_s."""

    request_id: str
    feeds: dict[str, np.ndarray]
    batch: int
    deadline_s: float  # time.monotonic() by which the result is due (inf without a latency SLO)
    arrived_s: float
    shape_key: tuple = ()

    def __post_init__(self) -> None:
        if not self.shape_key:
            self.shape_key = shape_key(self.feeds)


class LoadedVariant:
    """A loaded variant: its queue and its replicas — one session and one executor thread each —
    which take batches from the shared queue."""

    def __init__(self, spec: VariantSpec, runner, ctx: zmq.Context, results_endpoint: str,
                 settings: WorkerSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.pads = pads_to_max_batch(spec.backend, spec.batch_dim)  # every batch padded to the max batch
        self.queue: collections.deque[QueuedQuery] = collections.deque()
        self.cond = threading.Condition()
        self.running = True
        self.busy = 0  # replicas running a batch now
        self.last_used = time.monotonic()
        self.completed: collections.deque[tuple[float, float, int]] = collections.deque()  # (done_at, latency_ms, samples)
        self._last_arrival = 0.0
        self.arrival_gap_s = float("inf")  # moving average of the time between arrivals
        self._ctx = ctx
        self._endpoint = results_endpoint
        self.replicas: list[tuple[Any, threading.Event, threading.Thread]] = []
        self.add_replica(runner)

    def add_replica(self, runner) -> None:
        stop = threading.Event()
        thread = threading.Thread(target=self._loop, args=(runner, stop), daemon=True,
                                  name=f"variant-{self.spec.name}-{len(self.replicas)}")
        self.replicas.append((runner, stop, thread))
        thread.start()

    def remove_replica(self) -> bool:
        """Stop the newest replica (it finishes its batch first); the last one stays."""
        if len(self.replicas) <= 1:
            return False
        runner, stop, thread = self.replicas.pop()
        stop.set()
        with self.cond:
            self.cond.notify_all()
        thread.join(timeout=5)
        runner.close()
        return True

    @property
    def threads(self) -> int:
        return self.spec.threads * len(self.replicas)

    def submit(self, query: QueuedQuery) -> list[list] | None:
        """Queue a query for the executor thread — or, for a fast variant that is idle at low load,
        run it right here and return the result messages' frames (two thread handoffs saved)."""
        with self.cond:
            gap = query.arrived_s - self._last_arrival
            self._last_arrival = query.arrived_s
            self.arrival_gap_s = update_arrival_gap(self.arrival_gap_s, gap)
            self.last_used = time.monotonic()
            inline = run_inline(self.spec.latency_ms, query.batch, self.spec.max_batch, self.arrival_gap_s,
                                len(self.queue), self.busy, len(self.replicas), self.settings.inline_max_ms)
            if not inline:
                self.queue.append(query)
                self.cond.notify()
                return None
            self.busy += 1
        try:
            return self._run([query], self.replicas[0][0])
        finally:
            with self.cond:
                self.busy -= 1
                self.last_used = time.monotonic()
                if self.queue:
                    self.cond.notify()

    def idle(self) -> bool:
        with self.cond:
            return not self.queue and not self.busy

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify_all()
        for runner, _, thread in self.replicas:
            thread.join(timeout=5)
            runner.close()

    def _take_batch(self, stop: threading.Event) -> list[QueuedQuery] | None:
        """Wait for work, then take the batch the batching policy closes (None: this replica stops)."""
        spec = self.spec
        with self.cond:
            while True:
                if not self.running or stop.is_set():
                    return None
                decision = next_batch(self.queue, spec.max_batch, spec.batch_dim, self.arrival_gap_s,
                                      spec.latency_ms, time.monotonic(), self.settings.max_batch_wait_ms)
                if decision.take:
                    batch = [self.queue.popleft() for _ in range(decision.take)]
                    self.busy += 1
                    return batch
                self.cond.wait(min(decision.wait_s, 0.5))

    def _loop(self, runner, stop: threading.Event) -> None:
        push = self._ctx.socket(zmq.PUSH)
        push.connect(self._endpoint)
        try:
            while True:
                batch = self._take_batch(stop)
                if batch is None:
                    return
                try:
                    for frames in self._run(batch, runner):
                        push.send_multipart([_RESULT, *frames], copy=False)
                finally:
                    with self.cond:
                        self.busy -= 1
                        self.last_used = time.monotonic()
        finally:
            push.close(linger=1000)

    def _run(self, batch: list[QueuedQuery], runner) -> list[list]:
        """Run one batch; each query's answer as its message frames (the outputs' bytes as views, not copies)."""
        spec = self.spec
        started = time.monotonic()
        size = sum(q.batch for q in batch)
        try:
            if spec.batch_dim == "none" or (len(batch) == 1 and (not self.pads or size == spec.max_batch)):
                feeds = batch[0].feeds  # one query: its inputs as they arrived, no copy
            else:
                feeds = {name: np.concatenate([q.feeds[name] for q in batch], axis=0) for name in batch[0].feeds}
                if self.pads and size < spec.max_batch:  # pad to the one batch size it runs
                    feeds = {k: np.concatenate([v, np.repeat(v[-1:], spec.max_batch - size, axis=0)])
                             for k, v in feeds.items()}
            outputs = runner.run(feeds)
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300]
            return [protocol.encode(protocol.error("invalid_input", f"{spec.name} failed on the input: {reason}",
                                                   q.request_id)) for q in batch]
        inference_ms = (time.monotonic() - started) * 1e3
        messages, offset = [], 0
        now = time.monotonic()
        for q in batch:
            outs = outputs if spec.batch_dim == "none" else [o[offset:offset + q.batch] for o in outputs]
            offset += q.batch
            timing = {"queue_ms": (started - q.arrived_s) * 1e3, "inference_ms": inference_ms, "batch_size": size,
                      "worker_ms": (now - q.arrived_s) * 1e3}
            try:
                data: list = []
                body = ResultBody(outputs=[protocol.pack_output(o, data) for o in outs], timing=timing)
                messages.append(protocol.encode(protocol.Message("result", body, id=q.request_id, frames=data)))
            except protocol.ProtocolError as exc:
                messages.append(protocol.encode(protocol.error("internal", exc.reason, q.request_id)))
            with self.cond:
                self.completed.append((now, (now - q.arrived_s) * 1e3, q.batch))
        return messages

    def metrics(self, now: float) -> VariantMetrics:
        window_s = self.settings.metrics_window_s
        with self.cond:
            while self.completed and self.completed[0][0] < now - window_s:
                self.completed.popleft()
            done = list(self.completed)
            queued = sum(q.batch for q in self.queue)
        return VariantMetrics(state="loaded", queue=queued, qps=len(done) / window_s,
                              samples_per_s=sum(d[2] for d in done) / window_s,
                              latency_ms=float(np.mean([d[1] for d in done])) if done else 0.0,
                              threads=self.threads, replicas=len(self.replicas), idle_s=max(0.0, now - self.last_used))


def shape_key(feeds: dict[str, np.ndarray]) -> tuple:
    """Queries batch together only when their per-sample input shapes are equal."""
    return tuple((k, v.shape[1:]) for k, v in sorted(feeds.items()))
