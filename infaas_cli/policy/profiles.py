"""Which of a variant's profiles applies: the one rule shared by the selection index, the worker specs and listings."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from infaas_cli.catalog.records import ProfileRecord


def applicable_profile(profiles: Iterable[ProfileRecord], hardware_id: str | None = None) -> ProfileRecord | None:
    """The newest of `profiles` measured on `hardware_id`, else the newest on any hardware; None when there is none.

    `profiles` are one variant's. `hardware_id` None (hardware unknown) means the newest overall.
    Equal measurement times keep the first listed.
    """
    newest = newest_here = None
    for p in profiles:
        if newest is None or p.measured_at > newest.measured_at:
            newest = p
        if hardware_id is not None and p.hardware_id == hardware_id \
                and (newest_here is None or p.measured_at > newest_here.measured_at):
            newest_here = p
    return newest_here if newest_here is not None else newest


def applicable_profiles(profiles: Iterable[ProfileRecord],
                        hardware_ids: Mapping[str, str | None] | None = None) -> dict[str, ProfileRecord]:
    """variant -> its applicable profile, for every variant with one.

    `hardware_ids` maps a variant name to the hardware id to prefer for it (absent or None: newest overall).
    """
    by_variant: dict[str, list[ProfileRecord]] = {}
    for p in profiles:
        by_variant.setdefault(p.variant, []).append(p)
    prefer = hardware_ids or {}
    chosen = {}
    for name, mine in by_variant.items():
        chosen[name] = applicable_profile(mine, prefer.get(name))
    return chosen
