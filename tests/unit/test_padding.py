"""Which variants run one batch size (padded to their max batch), and the batch sizes they are profiled at."""

from types import SimpleNamespace

from infaas_cli.backends import pads_to_max_batch
from infaas_cli.toolkit.profiler import batch_sizes_for


def test_fixed_batch_models_and_fixed_shape_backends_pad():
    assert pads_to_max_batch("ort-cpu", "fixed") and pads_to_max_batch("ort-cuda", "fixed")
    assert pads_to_max_batch("ort-cuda", "dynamic") and pads_to_max_batch("ort-trt", "dynamic")
    assert not pads_to_max_batch("ort-cpu", "dynamic") and not pads_to_max_batch("ov-cpu", "dynamic")
    assert not pads_to_max_batch("ort-cuda", "none")


def test_a_padding_variant_is_profiled_at_its_max_batch_only():
    dynamic = SimpleNamespace(batch_dim="dynamic")  # batch_sizes_for reads these fields of the records only
    assert batch_sizes_for(SimpleNamespace(backend="ort-cpu", max_batch=8), dynamic, [1, 8, 32]) == [1, 8]
    assert batch_sizes_for(SimpleNamespace(backend="ort-cuda", max_batch=8), dynamic, [1, 8, 32]) == [8]
    assert batch_sizes_for(SimpleNamespace(backend="ort-cpu", max_batch=4), SimpleNamespace(batch_dim="fixed"),
                           [1, 8]) == [4]
