"""Pure tests of which profile applies to a variant, and that the index and the listings share the rule."""

from __future__ import annotations

from infaas_cli.catalog import listings
from infaas_cli.catalog.records import ModelRecord, ProfileRecord, VariantRecord
from infaas_cli.policy.profiles import applicable_profile, applicable_profiles
from infaas_cli.policy.selection import PriceTable, build_index

PRICES = PriceTable(1e-5, 1e-3, 5e-4)


def profile(variant: str, hw: str, at: float, p95_ms: float = 1.0) -> ProfileRecord:
    return ProfileRecord(variant=variant, model=variant.split("/", 1)[0], hardware_id=hw, hardware={},
                         load_time_ms=10.0, peak_memory_bytes=1000,
                         batches={"1": {"p95_ms": p95_ms}}, measured_at=at)


def variant(name: str = "cnn/ort-cpu-fp32-t1-b8", hardware: str = "cpu") -> VariantRecord:
    return VariantRecord(name=name, model=name.split("/", 1)[0], backend="ort-cpu", hardware=hardware,
                         recipe="fp32", precision="fp32", threads=1, max_batch=8, artifact_sha256="0" * 64,
                         accuracy=0.9, accuracy_metric="top1", build_time_ms=1.0, created_at=0.0)


def test_newest_on_the_hardware_else_newest_anywhere():
    here_old, here_new = profile("v", "cpu-here", 10.0), profile("v", "cpu-here", 20.0)
    elsewhere = profile("v", "cpu-there", 30.0)
    mine = [here_old, elsewhere, here_new]
    assert applicable_profile(mine, "cpu-here") is here_new
    assert applicable_profile(mine, "cpu-unseen") is elsewhere
    assert applicable_profile(mine) is elsewhere
    assert applicable_profile([], "cpu-here") is None


def test_equal_times_keep_the_first():
    a, b = profile("v", "x", 5.0), profile("v", "y", 5.0)
    assert applicable_profile([a, b]) is a


def test_applicable_profiles_per_variant():
    p1, p2, p3 = profile("a", "h1", 1.0), profile("a", "h2", 2.0), profile("b", "h1", 1.0)
    assert applicable_profiles([p1, p2, p3]) == {"a": p2, "b": p3}
    assert applicable_profiles([p1, p2, p3], {"a": "h1"}) == {"a": p1, "b": p3}


def test_build_index_and_listings_agree():
    v = variant()
    model = ModelRecord(name="cnn", task="t", dataset="d", artifact_sha256="0" * 64, source_file="cnn.onnx",
                        size_bytes=1, inputs=[], outputs=[], batch_dim="dynamic", max_batch=8, opset=17,
                        producer="test", accuracy=0.9, accuracy_metric="top1", validation_sha256=None,
                        validation_samples=0, registered_at=0.0)
    here, there = profile(v.name, "cpu-here", 10.0, p95_ms=2.0), profile(v.name, "cpu-there", 20.0, p95_ms=5.0)
    # Without a hardware to prefer, the newest.
    idx = build_index([model], [v], [here, there], PRICES)
    assert idx.infos[v.name].batch_latency_ms == ((1, 5.0),)
    # Preferring this host's hardware, like the listings.
    idx = build_index([model], [v], [here, there], PRICES, hardware_ids={"cpu": "cpu-here"})
    assert idx.infos[v.name].batch_latency_ms == ((1, 2.0),)


def test_listings_prefer_this_hosts_hardware(monkeypatch):
    v = variant()
    monkeypatch.setattr(listings, "host_hardware", lambda: {"cores": 4})
    local = listings.hardware_id("cpu", {"cores": 4})
    here, there = profile(v.name, local, 10.0), profile(v.name, "cpu-there", 20.0)
    assert listings.pick_profile(v, [there, here, profile("other", local, 99.0)]) is here
    assert listings.pick_profile(v, [there]) is there
    assert listings.pick_profile(v, [profile("other", local, 1.0)]) is None
