"""Baseline serving policies for honest comparison: a fixed variant per query class (Clipper+/SageMaker+-like)."""

from __future__ import annotations

from infaas_cli.policy.selection import CatalogIndex, NoVariantError, Query, UnknownModelError

#: The policies a master can run: the full system and the two fixed-variant baselines. `fixed-peak`
#: (Clipper+-like): each query class's fixed variant on hosts provisioned for the peak, never scaled;
#: `fixed-autoscale` (SageMaker+-like): the same variants, replicas and hosts added and removed with load.
POLICIES = ("infaas", "fixed-peak", "fixed-autoscale")
#: Former names, still accepted wherever a policy is named.
POLICY_ALIASES = {"static": "fixed-peak", "replicate": "fixed-autoscale"}


def canonical_policy(name: str) -> str:
    """A policy's name as POLICIES spells it (an alias becomes its policy; anything else is returned as is)."""
    return POLICY_ALIASES.get(name, name)


def query_class(query: Query) -> tuple:
    """Queries of one class share a pinned variant under the baselines."""
    return (query.kind, query.model, query.task, query.dataset, query.latency_ms, query.min_accuracy)


def pin_variant(query: Query, index: CatalogIndex) -> str:
    """The most accurate variant that meets the query's SLO at low load (batch 1, no queue, already loaded).

    This is how an operator hand-picks one variant per application and then only replicates it;
    ties go to the faster variant, then the larger max batch, then the name.
    """
    if query.kind == "variant":
        return query.variant  # type: ignore[return-value]
    if query.kind == "model":
        model = index.model_id(query.model)  # the version its route serves
        candidates = [v for v in index.infos.values() if v.model == model and v.profiled]
        what = f"model {query.model}"
    else:
        candidates = [v for v in index.infos.values() if v.task == query.task and v.dataset == query.dataset
                      and v.profiled and v.model in index.serving_models]
        what = f"task {query.task}/{query.dataset}"
    if not candidates:
        raise UnknownModelError(f"no profiled variant for {what}")
    best = None
    for v in candidates:
        latency = v.latency_ms(1)
        if latency is None or (query.latency_ms is not None and latency > query.latency_ms):
            continue
        if query.min_accuracy and (v.accuracy is None or v.accuracy < query.min_accuracy):
            continue
        key = (-(v.accuracy or 0.0), latency, -v.max_batch, v.name)
        if best is None or key < best[0]:
            best = (key, v.name)
    if best is None:
        raise NoVariantError(f"no variant of {what} meets the SLO even at low load; relax --latency-ms or "
                             "--min-accuracy")
    return best[1]
