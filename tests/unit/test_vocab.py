"""The one vocabulary: enums, older spellings read on input, format IDs."""

from __future__ import annotations

import pytest

from envkit.vocab import (
    FAILING_STATUSES,
    Device,
    DType,
    Framework,
    Status,
    format_id,
    is_format,
    normalize_device,
    normalize_dtype,
    normalize_framework,
    parse_format_id,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pytorch", Framework.PYTORCH),
        ("torch", Framework.PYTORCH),
        (" Torch ", Framework.PYTORCH),
        ("tf", Framework.TENSORFLOW),
        ("tensorflow", Framework.TENSORFLOW),
    ],
)
def test_framework_aliases(text: str, expected: Framework) -> None:
    assert normalize_framework(text) is expected
    assert str(normalize_framework(text)) == expected.value  # what documents carry


def test_devices_and_dtypes_read_the_older_spellings() -> None:
    assert normalize_device("cuda") is Device.GPU and normalize_device("CPU") is Device.CPU
    assert normalize_dtype("float32") is DType.FP32 and normalize_dtype("bfloat16") is DType.BF16
    assert normalize_dtype("half") is DType.FP16 and normalize_dtype("fp8") is DType.FP8


@pytest.mark.parametrize(("fn", "bad"), [(normalize_framework, "jax"), (normalize_device, "tpu")])
def test_unknown_words_are_value_errors(fn, bad: str) -> None:
    with pytest.raises(ValueError):
        fn(bad)
    with pytest.raises(ValueError):
        normalize_dtype("fp7")


def test_statuses_are_the_strings_documents_hold() -> None:
    assert [s.value for s in Status] == ["ok", "warn", "fail", "not_present", "not_applicable", "error"]
    assert Status.OK == "ok" and {Status.FAIL, Status.ERROR} == FAILING_STATUSES


def test_format_ids_one_style_and_the_older_ones_read() -> None:
    assert format_id("checkpoint", 1) == "envkit.checkpoint/v1"
    assert parse_format_id("envkit.bench/v2") == ("bench", 2)
    assert parse_format_id("envkit-checkpoint/1") == ("checkpoint", 1)  # the older style
    for bad in ("envkit.bench", "other.bench/v1", "envkit./v1", ""):
        with pytest.raises(ValueError):
            parse_format_id(bad)
    for kind, version in (("Bad", 1), ("bench", 0)):
        with pytest.raises(ValueError):
            format_id(kind, version)
    assert is_format("envkit.doctor/v1", "doctor") and not is_format("envkit.doctor/v1", "bench")
    assert is_format("envkit.doctor/v2", "doctor", max_version=2)
    assert not is_format("envkit.doctor/v3", "doctor", max_version=2) and not is_format(None, "doctor")
