"""One error vocabulary: every InfaasError carries a protocol code, one wire mapping, one exit-code table."""

from __future__ import annotations

import ast
import importlib
import pickle
import pkgutil

import pytest

import daemons
import infaas_cli
from infaas_cli import errors
from infaas_cli.errors import (ERROR_CODES, EXIT_CODES, INTERNAL_REASON, InfaasError, NotFoundError, ProtocolError,
                               exit_code, wire_error)
from support import REPO

#: Today's protocol codes: never renamed or removed.
PROTOCOL_V1_CODES = {"malformed", "unsupported_version", "unknown_type", "bad_request", "unknown_model", "no_variant",
                     "invalid_input", "not_found", "checksum", "sequence_gap", "worker_lost", "overloaded",
                     "unavailable", "internal"}


def _all_error_classes() -> list[type[InfaasError]]:
    for package in (infaas_cli, daemons):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if not info.name.endswith("__main__"):  # __main__ runs the CLI
                importlib.import_module(info.name)
    found, todo = [], [InfaasError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_error_class_carries_a_protocol_code():
    classes = _all_error_classes()
    assert len(classes) > 15  # the walk found the subclasses in other modules too
    bad = [f"{c.__module__}.{c.__qualname__}: {c.code!r}" for c in classes if c.code not in ERROR_CODES]
    assert not bad


def test_codes_keep_the_protocol_ones_and_say_what_they_mean():
    assert PROTOCOL_V1_CODES <= set(ERROR_CODES)
    assert all(code.isidentifier() and code.islower() and meaning for code, meaning in ERROR_CODES.items())
    assert ProtocolError.__mro__[1] is InfaasError


def test_protocol_module_reexports_the_one_vocabulary():
    from infaas_cli import protocol
    assert protocol.ERROR_CODES is ERROR_CODES and protocol.ProtocolError is ProtocolError


def test_a_class_with_an_unknown_code_is_refused_when_defined():
    with pytest.raises(TypeError, match="'store_broke', which is not an error code"):
        class Broken(InfaasError):  # noqa: F841
            code = "store_broke"


def test_an_unknown_code_is_refused_at_raise_time_too():
    with pytest.raises(ValueError, match="nonsense"):
        ProtocolError("nonsense", "x")
    with pytest.raises(ValueError, match="nonsense"):
        InfaasError("x", code="nonsense")


def test_protocol_error_keeps_code_and_reason():
    exc = ProtocolError("checksum", "artifact abc arrived corrupt", sha256="ab" * 32)
    assert (exc.code, exc.reason, str(exc), exc.sha256) == ("checksum", "artifact abc arrived corrupt",
                                                            "artifact abc arrived corrupt", "ab" * 32)
    assert isinstance(exc, InfaasError)
    assert wire_error(exc) == ("checksum", "artifact abc arrived corrupt", {"sha256": "ab" * 32})


def test_wire_error_maps_domain_errors_with_their_details():
    from infaas_cli.catalog.store import SequenceGapError
    from infaas_cli.policy.selection import NoVariantError
    slow = NoVariantError("no variant of cnn meets 2 ms; the fastest is 3.1 ms", best_latency_ms=3.1)
    assert wire_error(slow) == ("no_variant", str(slow), {"best_latency_ms": 3.1})  # None details stay home
    gap = SequenceGapError("src", 4, 9)
    assert wire_error(gap) == ("sequence_gap", str(gap), {"last_seq": 4}) and gap.last_seq == 4
    assert wire_error(NotFoundError("no such thing")) == ("not_found", "no such thing", {})
    assert wire_error(InfaasError("plain")) == ("failed", "plain", {})
    assert wire_error(InfaasError("lost", code="worker_lost", worker_id="w1")) == ("worker_lost", "lost",
                                                                                   {"worker_id": "w1"})


def test_wire_error_hides_unexpected_exceptions():
    try:
        {}["secret-key-name"]
    except KeyError as exc:
        code, reason, extra = wire_error(exc)
    assert (code, reason, extra) == ("internal", INTERNAL_REASON, {})
    assert "secret" not in reason and "Traceback" not in reason


def test_details_may_not_shadow_attributes():
    with pytest.raises(TypeError, match="reason"):
        InfaasError("x", code="failed", **{"reason": "y"})
    with pytest.raises(TypeError, match="with_traceback"):
        InfaasError("x", with_traceback=1)


def test_errors_survive_pickling_with_their_own_signatures():
    from infaas_cli.catalog.store import SequenceGapError
    for exc in (SequenceGapError("src", 4, 9), ProtocolError("no_variant", "slow", best_latency_ms=3.0)):
        back = pickle.loads(pickle.dumps(exc))
        assert (type(back), str(back), back.code, back.details) == (type(exc), str(exc), exc.code, exc.details)


def test_exit_table_covers_every_code():
    assert set(EXIT_CODES) == set(ERROR_CODES)
    assert set(EXIT_CODES.values()) <= {1, 2, 3, 4, 5}


def test_exit_codes_follow_the_documented_scheme():
    from infaas_cli.client.client import MasterUnreachableError, QueryFailed
    from infaas_cli.policy.selection import NoVariantError
    assert exit_code(NotFoundError("x")) == 1
    assert exit_code(InfaasError("x")) == 1
    assert exit_code(errors.ConfigError("x")) == 2
    assert exit_code(MasterUnreachableError("x")) == 3
    assert exit_code(NoVariantError("x")) == 4
    assert exit_code(QueryFailed("overloaded", "late")) == 4
    assert exit_code(RuntimeError("boom")) == 5
    assert exit_code(KeyboardInterrupt()) == 130
    for number in ("1", "2", "3", "4", "5", "130"):
        assert f"* {number} —" in errors.__doc__


def test_query_failed_with_a_code_from_a_newer_peer_is_internal():
    from infaas_cli.client.client import QueryFailed
    exc = QueryFailed("from_the_future", "new", {"code": "from_the_future", "reason": "new"})
    assert exc.code == "internal" and exc.body["code"] == "from_the_future"


def test_no_assert_statements_outside_tests():
    """Validation must survive `python -O`: an explicit check raising an InfaasError, never assert."""
    found = []
    for root in ("infaas_cli", "daemons"):
        for path in sorted((REPO / root).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            found += [f"{path.relative_to(REPO)}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, ast.Assert)]
    assert not found
