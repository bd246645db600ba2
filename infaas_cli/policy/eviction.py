"""Which loaded variants a worker unloads to make room for a load: least recently used first, idle unpinned ones."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resident:
    """A variant loaded on the worker, as eviction sees it."""

    name: str
    last_used_s: float
    threads: int  # all its replicas' threads
    memory_bytes: int = 0  # profiled peak memory: what unloading it is expected to give back
    #: Not running a batch, nothing queued and no query parked for it: the only kind that may be unloaded.
    idle: bool = True
    #: Pinned by an operator (`infaas load`, master.min_loaded): kept loaded however idle, never a victim.
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class Eviction:
    victims: tuple[str, ...]  # unload these, in this order
    fits: bool  # after unloading them the load may start; False: wait for busy variants (nothing is unloaded)


def plan_eviction(loaded: Iterable[Resident], threads: int, free_threads: int, memory_bytes: int = 0,
                  free_memory_bytes: int | None = None, loading: bool = False) -> Eviction:
    """The idle variants to unload, least recently used first, so that a load of `threads` and `memory_bytes` fits.

    `free_threads` is the worker's cores minus the threads of everything loaded or loading (negative when
    oversubscribed); `loading` says whether another load is in progress. Memory first: idle variants go
    until `free_memory_bytes` plus what they give back covers `memory_bytes`; memory never blocks a load
    (when every idle variant is gone it may still fit: profiles overestimate shared pages). Then cores:
    more idle variants go until `threads` are free. When even unloading every idle variant leaves too few
    cores, nothing is unloaded and `fits` is False (unloading would cost warm variants for nothing) —
    unless nothing would be left loaded or loading: alone, a variant may use every core. Pinned variants
    are never victims, and a worker holding one is never "alone".
    """
    residents = list(loaded)
    idle = sorted((r for r in residents if r.idle and not r.pinned), key=lambda r: (r.last_used_s, r.name))
    victims: list[str] = []
    free = free_threads
    i = 0
    if memory_bytes and free_memory_bytes is not None:
        memory = free_memory_bytes
        while memory < memory_bytes and i < len(idle):
            victims.append(idle[i].name)
            memory += idle[i].memory_bytes
            free += idle[i].threads
            i += 1
    while free < threads and i < len(idle):
        victims.append(idle[i].name)
        free += idle[i].threads
        i += 1
    if free >= threads:
        return Eviction(tuple(victims), True)
    alone = not loading and all(r.idle and not r.pinned for r in residents)
    if alone:
        return Eviction(tuple(victims), True)  # every idle variant is among the victims by now
    return Eviction((), False)
