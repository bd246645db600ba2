"""The CLI's enumerations list what the library accepts (spelled out there to keep the CLI's start fast)."""

from __future__ import annotations

from infaas_cli.cli.app import LogLevel, Objective, Policy, SloMode
from infaas_cli.cli.hosts import Enforcement
from infaas_cli.cluster.hosts import ENFORCEMENTS
from infaas_cli.policy.baselines import POLICIES, POLICY_ALIASES
from infaas_cli.protocol.messages import QueryBody
from infaas_cli.settings import LOG_LEVELS


def test_choices_match_the_library():
    assert [p.value for p in Policy] == [*POLICIES, *POLICY_ALIASES]
    assert [level.value for level in LogLevel] == list(LOG_LEVELS)
    assert [e.value for e in Enforcement] == list(ENFORCEMENTS)
    hints = QueryBody.__annotations__
    assert all(o.value in hints["objective"] for o in Objective) and all(m.value in hints["slo_mode"] for m in SloMode)
