"""How a worker gets a variant running: make room (evict), fetch its artifact, open it off-loop, hand it over.

A load that fails for any reason releases the variant and its threads and answers every query
held for it with an error; nothing stays "loading" for ever.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import zmq

from infaas_cli import protocol
from infaas_cli.backends import backend as backend_named, pads_to_max_batch
from infaas_cli.catalog.artifacts import sha256_file
from infaas_cli.errors import wire_error
from infaas_cli.policy.eviction import Resident, plan_eviction
from infaas_cli.protocol import messages as m
from infaas_cli.toolkit.modelio import synthetic_inputs
from infaas_daemons.common import log
from infaas_daemons.worker.executor import _LOADER, LoadedVariant


@dataclass
class _Fetch:
    sha256: str
    path: Path
    offset: int = 0


#: Past this many digests to drop, the worker lists its cache once instead of looking each one up.
DROP_LISTING_FROM = 64


class Loading:
    def _ensure_loaded(self, spec: m.VariantSpec) -> None:
        if spec.name in self.loading or spec.name in self.variants or spec.name in self.waiting_budget:
            return
        try:
            self._start_load(spec)
        except Exception as exc:  # never leave the variant half-loading with its queries held
            self.loading.pop(spec.name, None)
            code, reason, _ = wire_error(exc)
            log.warning("loading %s failed: %s", spec.name, reason)
            self._fail_parked(spec.name, code, f"loading {spec.name} failed: {reason}")

    def _start_load(self, spec: m.VariantSpec) -> None:
        if spec.backend not in self.backends:
            self._fail_parked(spec.name, "unavailable", f"backend {spec.backend} is not available on {self.worker_id}")
            return
        # Wanted again (re-registered): it stays — before making room, whose evictions would otherwise delete it
        self.drop_later.discard(spec.artifact_sha256)
        if not self._make_room(spec.threads, spec.peak_memory_bytes):
            self.waiting_budget[spec.name] = spec
            self.waiting_since.setdefault(spec.name, time.monotonic())
            return
        self.waiting_since.pop(spec.name, None)
        self.loading[spec.name] = spec
        if self.cache.has(spec.artifact_sha256):
            self._loader.submit(self._load, spec)
            return
        self.fetch_waiters.setdefault(spec.artifact_sha256, []).append(spec)
        if spec.artifact_sha256 not in self.fetches:
            self.cache.root.mkdir(parents=True, exist_ok=True)
            # The cache may be shared by the workers of one host: each fetches into its own file,
            # and the content-addressed store renames it into place atomically.
            path = self.cache.root / f".fetch-{spec.artifact_sha256}-{self.worker_id}"
            path.write_bytes(b"")
            self.fetches[spec.artifact_sha256] = _Fetch(spec.artifact_sha256, path)
            self._send(protocol.Message("fetch", m.FetchBody(sha256=spec.artifact_sha256, offset=0,
                                                             worker_id=self.worker_id)))

    def _threads_in_use(self) -> int:
        extra = sum(self.variants[n].spec.threads * k for n, k in self.loading_replicas.items() if n in self.variants)
        return sum(v.threads for v in self.variants.values()) + sum(s.threads for s in self.loading.values()) + extra

    def _make_room(self, threads: int, memory_bytes: int = 0) -> bool:
        """Keep thread budgets within the host's cores and loads within free memory: unload what the
        eviction policy picks (idle variants an operator did not pin, least recently used first); True when the
        load fits."""
        plan = plan_eviction(
            [Resident(name, v.last_used, v.threads, v.spec.peak_memory_bytes * len(v.replicas),
                      idle=v.idle() and not self.parked.get(name), pinned=name in self.pinned)
             for name, v in self.variants.items()],
            threads, self.cores - self._threads_in_use(), memory_bytes, psutil.virtual_memory().available,
            loading=bool(self.loading))
        for name in plan.victims:
            log.info("unloading idle %s to make room for %d thread(s)", name, threads)
            self._unload(name)
        return plan.fits

    def _retry_budget(self) -> None:
        """Retry loads that waited for cores; past budget_wait_s their queries get an explicit error."""
        waiting, self.waiting_budget = self.waiting_budget, {}
        now = time.monotonic()
        for name, spec in waiting.items():
            if now - self.waiting_since.get(name, now) > self.settings.budget_wait_s:
                self.waiting_since.pop(name, None)
                busy = ", ".join(f"{n} ({v.threads})" for n, v in self.variants.items())
                self._fail_parked(name, "unavailable",
                                  f"{self.worker_id} has no free cores for {name} ({spec.threads} thread(s)); "
                                  f"its {self.cores} cores run {busy or 'loads in progress'}")
                continue
            self._ensure_loaded(spec)

    def _retire_idle(self) -> None:
        """Unload switched-out variants whose queues are empty, then start the loads that waited for them."""
        done = [n for n in self.retiring if n not in self.variants or self.variants[n].idle()]
        for name in done:
            self.retiring.discard(name)
            if name in self.variants:
                log.info("switched out %s", name)
                self._unload(name)
        if done and self.waiting_budget:
            self._retry_budget()

    def _unload(self, name: str) -> None:
        loaded = self.variants.pop(name, None)
        if loaded is not None:
            loaded.stop()
            if loaded.spec.artifact_sha256 in self.drop_later:
                self._drop_cached([loaded.spec.artifact_sha256])

    def _artifacts_in_use(self) -> set[str]:
        """The artifacts of the variants this worker holds, is loading or is fetching."""
        return ({v.spec.artifact_sha256 for v in self.variants.values()} |
                {s.artifact_sha256 for s in self.loading.values()} |
                {s.artifact_sha256 for s in self.waiting_budget.values()} | set(self.fetches))

    def _on_drop_artifacts(self, msg: protocol.Message) -> None:
        """The catalog no longer uses these artifacts (their models were removed): delete the cached copies. One a
        variant here still uses (a removed variant finishing its queue) goes when that variant unloads."""
        self._drop_cached(msg.body.artifacts)

    def _drop_cached(self, digests: list[str]) -> None:
        in_use = self._artifacts_in_use()
        # Told many (a returning worker hears every artifact the master's removals freed, up to
        # master.artifact_tombstones_max, most of which it never cached): one listing of the cache, not a look-up
        # per digest; told a few (an unload's): a look-up each.
        held = None
        if len(digests) > DROP_LISTING_FROM:
            try:
                held = set(self.cache.digests())
            except OSError as exc:
                log.warning("could not list the artifact cache (%s); looking each artifact up", exc)
        removed: list[tuple[str, int]] = []
        for sha in digests:
            if sha in in_use:
                self.drop_later.add(sha)
                continue
            self.drop_later.discard(sha)
            if not (sha in held if held is not None else self.cache.has(sha)):
                continue
            try:  # one at a time: a file that cannot go does not keep the others
                removed += self.cache.collect_garbage(in_use, [sha])
            except OSError as exc:  # another worker sharing the cache removed it first, or it is not ours to delete
                log.warning("could not drop cached artifact %s: %s", sha[:12], exc)
        if removed:
            log.info("dropped %d cached artifact(s) no model uses any more, %d bytes", len(removed),
                     sum(size for _, size in removed))

    def _on_chunk(self, msg: protocol.Message) -> None:
        b: m.ArtifactChunkBody = msg.body
        fetch = self.fetches.get(b.sha256)
        if fetch is None or b.offset != fetch.offset:
            return  # a stale or duplicate chunk
        with open(fetch.path, "ab") as fh:
            fh.write(b.data)
        fetch.offset += len(b.data)
        if fetch.offset < b.total_bytes and b.data:
            self._send(protocol.Message("fetch", m.FetchBody(sha256=b.sha256, offset=fetch.offset,
                                                             worker_id=self.worker_id)))
            return
        del self.fetches[b.sha256]
        waiters = self.fetch_waiters.pop(b.sha256, [])
        if sha256_file(fetch.path) != b.sha256:
            fetch.path.unlink(missing_ok=True)
            for spec in waiters:
                self.loading.pop(spec.name, None)
                self._fail_parked(spec.name, "checksum", f"artifact of {spec.name} arrived corrupt; query again")
            return
        self.cache.put_file(fetch.path)
        fetch.path.unlink(missing_ok=True)
        for spec in waiters:
            self._loader.submit(self._load, spec)

    def _fetch_failed(self, sha: str, reason: str) -> None:
        fetch = self.fetches.pop(sha)
        fetch.path.unlink(missing_ok=True)
        for spec in self.fetch_waiters.pop(sha, []):
            self.loading.pop(spec.name, None)
            self._fail_parked(spec.name, "not_found", f"artifact of {spec.name} unavailable: {reason}")

    def _load(self, spec: m.VariantSpec) -> None:
        """Loader thread: open the session, warm it up, hand it to the loop."""
        push = self.ctx.socket(zmq.PUSH)
        push.connect(self._results_endpoint)
        try:
            started = time.monotonic()
            runner = backend_named(spec.backend).load(self.cache.verify(spec.artifact_sha256), spec.recipe,
                                                      spec.threads)
            inputs = self._input_specs(spec)
            # Warmed at the one batch size it will run if it pads (a fixed-batch model refuses another; a fixed-shape
            # backend pays its first run of a shape here, not on a query), else at 1.
            warm = synthetic_inputs(inputs, spec.batch_dim,
                                    spec.max_batch if pads_to_max_batch(spec.backend, spec.batch_dim) else 1)
            runner.run({k: v[0] for k, v in warm.items()} if spec.batch_dim == "none" else warm)
            load_ms = (time.monotonic() - started) * 1e3
            token = uuid.uuid4().hex
            self._ready[token] = runner
            push.send_multipart([_LOADER, b"ok", spec.name.encode(), token.encode(), repr(load_ms).encode()])
        except Exception as exc:
            reason = " ".join(str(exc).split())[:300]
            push.send_multipart([_LOADER, b"failed", spec.name.encode(), reason.encode()])
        finally:
            push.close(linger=1000)

    def _on_loader(self, frames: list[bytes]) -> None:
        """A loader thread's report: the session is ready (hand it to the variant), or the load failed."""
        status, name = frames[1], frames[2].decode()
        if status == b"ok":
            self._on_loaded(name, frames[3].decode(), float(frames[4]))
        else:
            self._on_load_failed(name, frames[3].decode(errors="replace"))

    def _on_loaded(self, name: str, token: str, load_ms: float) -> None:
        runner = self._ready.pop(token, None)
        if runner is None:
            return
        loaded_msg = protocol.Message("loaded", m.LoadedBody(variant=name, load_time_ms=load_ms,
                                                            worker_id=self.worker_id))
        if name in self.variants and self.loading_replicas.get(name):  # an extra replica
            self.loading_replicas[name] -= 1
            self.variants[name].add_replica(runner)
            log.info("added a replica of %s (%d now)", name, len(self.variants[name].replicas))
            self._send(loaded_msg)
            return
        spec = self.loading.pop(name, None)
        if spec is None:
            runner.close()
            return
        loaded = LoadedVariant(spec, runner, self.ctx, self._results_endpoint, self.settings)
        self.variants[name] = loaded
        for q in self.parked.pop(name, []):
            for frames in loaded.submit(q) or ():
                self._send_frames(frames)
        self._send(loaded_msg)
        log.info("loaded %s in %.1f ms", name, load_ms)

    def _on_load_failed(self, name: str, reason: str) -> None:
        if self.loading_replicas.get(name):
            self.loading_replicas[name] -= 1
            return
        self.loading.pop(name, None)
        log.warning("loading %s failed: %s", name, reason)
        self._fail_parked(name, "internal", f"loading {name} failed: {reason}")

    def _fail_parked(self, name: str, code: str, reason: str) -> None:
        for q in self.parked.pop(name, []):
            self._send(protocol.error(code, reason, q.request_id))
