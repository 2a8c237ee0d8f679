"""The version matrix is consistent: one bump, one line, and these still hold."""

from __future__ import annotations

import re

import pytest

from envkit.matrix import (
    DTYPES,
    MatrixError,
    load_matrix,
    major_minor,
    parse_matrix,
    version_tuple,
)

M = load_matrix()


def test_every_table_names_its_source_and_date():
    for name, src in M.sources.items():
        assert src.url.startswith("http") or "datasheet" in src.url.lower(), name
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", src.read), name


def test_minor_compat_floors_are_the_published_ones():
    assert M.cuda_floor["11"] == "450.80.02"
    assert M.cuda_floor["12"] == "525.60.13"
    assert version_tuple(M.cuda_floor["13"]) >= (580,)


def test_toolkit_drivers_never_below_their_major_floor_and_grow_with_cuda():
    rows = sorted(M.toolkit_driver.items(), key=lambda kv: version_tuple(kv[0]))
    for cuda, drv in rows:
        assert version_tuple(drv) >= version_tuple(M.cuda_floor[cuda.split(".")[0]]), cuda
    drivers = [version_tuple(d) for _, d in rows]
    assert drivers == sorted(drivers)


@pytest.mark.parametrize("row", M.images, ids=lambda r: r.key)
def test_image_rows_are_consistent(row):
    assert row.framework in ("pytorch", "tensorflow")
    assert row.variant in ("cpu", "cuda", "cuda-devel")
    assert row.version in row.tag
    assert re.fullmatch(r"3\.\d+", row.python)
    if row.variant == "cpu":
        assert row.cuda is None
        assert "cuda" not in row.tag and "nvidia/cuda" not in row.base_image
    else:
        assert row.cuda is not None
        # the CUDA base image carries the row's CUDA version, and is -base (or -devel)
        m = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-(base|devel)-ubuntu\d+\.\d+", row.base_image)
        assert m, row.base_image
        assert m.group(1) == row.cuda
        assert (m.group(2) == "devel") == (row.variant == "cuda-devel")
        assert f"cuda{row.cuda}" in row.tag
        # every CUDA version an image needs has a driver requirement
        M.driver_requirement(row.cuda)
    if row.framework == "pytorch":
        builds = M.pytorch_cuda[major_minor(row.version)]
        idx = re.search(r"/whl/(cpu|cu(\d+))$", row.wheel_index)
        assert idx, row.wheel_index
        if row.variant == "cpu":
            assert idx.group(1) == "cpu"
        else:
            # cu130 <-> CUDA 13.0, cu128 <-> 12.8
            assert idx.group(2) == row.cuda.replace(".", "")
            assert row.cuda in builds
    else:
        tested = M.tensorflow_cuda[major_minor(row.version)]
        assert row.package.startswith("tensorflow")
        if row.variant != "cpu":
            assert row.cuda == tested["cuda"]
            assert "and-cuda" in row.package
        else:
            assert row.package == "tensorflow-cpu"


def test_ansible_driver_branch_serves_every_cuda_image():
    branch = M.ansible["nvidia_driver_branch"]
    for row in M.images:
        if row.cuda:
            req = M.driver_requirement(row.cuda)
            assert int(branch) >= version_tuple(req.toolkit_driver or req.minor_compat_floor)[0]


def test_gpu_peaks_cover_the_fleet_and_are_sane():
    for name in [
        "Tesla V100-SXM2-32GB",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA L4",
        "NVIDIA L40S",
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H100 PCIe",
        "NVIDIA H200",
        "NVIDIA B200",
        "NVIDIA GeForce RTX 4090",
    ]:
        assert M.gpu(name) is not None, name
    for g in M.gpus:
        # tensor-core half precision is never slower than tf32 or fp32
        if g.peak("bf16") and g.peak("tf32"):
            assert g.peak("bf16") >= g.peak("tf32") >= g.peak("fp32")
        if g.peak("fp8"):
            assert g.peak("fp8") >= g.peak("fp16")
        assert set(g.tflops) == set(DTYPES)


def test_gpu_matching_prefers_the_specific_row():
    assert M.gpu("NVIDIA L40S").name == "L40S"
    assert M.gpu("NVIDIA L4").name == "L4"
    assert M.gpu("NVIDIA H200 NVL").name == "H200-NVL"
    assert M.gpu("NVIDIA H100 PCIe").name == "H100-PCIe"
    assert M.gpu("NVIDIA A100 80GB PCIe").name == "A100-PCIe"
    assert M.gpu("Some Unknown GPU") is None
    assert M.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4)


@pytest.mark.parametrize(
    ("driver", "cuda", "status"),
    [
        ("580.65.06", "13.0", "ok"),
        ("575.57.08", "13.0", "fail"),
        ("535.104.05", "12.4", "warn"),
        ("525.60.13", "12.8", "warn"),
        ("520.61.05", "12.1", "fail"),
        ("560.35.03", "12.6", "ok"),
        ("470.82.01", "11.8", "warn"),
    ],
)
def test_driver_verdicts(driver, cuda, status):
    got, reason = M.driver_verdict(driver, cuda)
    assert got == status, reason
    assert cuda.split(".")[0] in reason


def test_version_helpers():
    assert version_tuple("535.54.03") == (535, 54, 3)
    assert major_minor("2.13.0+cpu") == "2.13"
    with pytest.raises(MatrixError):
        major_minor("x")


def test_malformed_matrix_is_a_clear_error():
    with pytest.raises(MatrixError, match="malformed"):
        parse_matrix({"schema_version": 1})
    with pytest.raises(MatrixError, match="no image"):
        M.image("pytorch", "rocm")
