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
        # CUDA comes from the framework's wheels (issue 12): the same plain base as the cpu rows
        assert row.base_image == M.image(row.name, "cpu").base_image
        assert row.python == M.image(row.name, "cpu").python
        assert f"cuda{row.cuda}" in row.tag
        # every CUDA version an image needs has a driver requirement
        M.driver_requirement(row.cuda)
    if row.framework == "pytorch":
        builds = M.pytorch_cuda[major_minor(row.version)]
        if row.variant == "cpu":
            idx = re.search(r"/whl/(cpu|cu(\d+))$", row.wheel_index)
            assert idx and idx.group(1) == "cpu", row.wheel_index
        else:
            # PyPI's default Linux torch wheel is one of the version's CUDA builds
            assert row.wheel_index == "https://pypi.org/simple"
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


# Real nvmlDeviceGetName strings (as nvidia-smi -L / torch.cuda.get_device_name print them)
# and the datasheet's dense bf16 (fp16 where bf16 has no hardware) peak for each SKU.
REAL_NAMES = [
    ("Tesla V100-SXM2-32GB", "V100-SXM2", "fp16", 125.0),
    ("Tesla V100-SXM2-16GB", "V100-SXM2", "fp16", 125.0),
    ("Tesla V100-PCIE-32GB", "V100-PCIe", "fp16", 112.0),
    ("Tesla V100S-PCIE-32GB", "V100S-PCIe", "fp16", 130.0),
    ("Tesla T4", "T4", "fp16", 65.0),
    ("NVIDIA A100-SXM4-80GB", "A100-SXM4", "bf16", 312.0),
    ("NVIDIA A100-SXM4-40GB", "A100-SXM4", "bf16", 312.0),
    ("NVIDIA A100-PCIE-40GB", "A100-PCIe", "bf16", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100-PCIe", "bf16", 312.0),
    ("NVIDIA A800 80GB PCIe", "A800-PCIe", "bf16", 312.0),
    ("NVIDIA A800-SXM4-80GB", "A800-SXM4", "bf16", 312.0),
    ("NVIDIA A30", "A30", "bf16", 165.0),
    ("NVIDIA A10", "A10", "bf16", 125.0),
    ("NVIDIA L4", "L4", "bf16", 121.0),
    ("NVIDIA L40", "L40", "bf16", 181.05),
    ("NVIDIA L40S", "L40S", "bf16", 362.05),
    ("NVIDIA L20", "L20", "bf16", 119.5),
    ("NVIDIA RTX 6000 Ada Generation", "RTX-6000-Ada", "bf16", 364.2),
    ("NVIDIA GeForce RTX 4090", "RTX-4090", "bf16", 165.2),
    ("NVIDIA H100 80GB HBM3", "H100-SXM", "bf16", 989.4),
    ("NVIDIA H100 PCIe", "H100-PCIe", "bf16", 756.0),
    ("NVIDIA H100 NVL", "H100-NVL", "bf16", 835.5),
    ("NVIDIA H800", "H800-SXM", "bf16", 989.4),
    ("NVIDIA H800 PCIe", "H800-PCIe", "bf16", 756.0),
    ("NVIDIA H200", "H200-SXM", "bf16", 989.4),
    ("NVIDIA H200 NVL", "H200-NVL", "bf16", 835.5),
    ("NVIDIA GH200 480GB", "GH200", "bf16", 989.4),
    ("NVIDIA B200", "B200", "bf16", 2250.0),
    ("NVIDIA GB200", "GB200", "bf16", 2500.0),
]


@pytest.mark.parametrize(("nvml_name", "row", "dtype", "peak"), REAL_NAMES)
def test_each_real_nvml_name_finds_its_own_row(nvml_name, row, dtype, peak):
    assert M.gpu(nvml_name).name == row
    assert M.peak_tflops(nvml_name, dtype) == pytest.approx(peak)


def test_every_matrix_row_is_in_the_real_name_table():
    # a row added without a real name string in REAL_NAMES is untested
    assert {g.name for g in M.gpus} == {row for _, row, _, _ in REAL_NAMES}


def test_gpu_peaks_are_sane():
    for g in M.gpus:
        # tensor-core half precision is never slower than tf32 or fp32
        if g.peak("bf16") and g.peak("tf32"):
            assert g.peak("bf16") >= g.peak("tf32") >= g.peak("fp32")
        if g.peak("fp8"):
            assert g.peak("fp8") >= g.peak("fp16")
        assert set(g.tflops) == set(DTYPES)
        assert g.sms is None or 20 <= g.sms <= 200


def test_no_substring_match_l40_is_not_l4_and_names_are_unique():
    assert M.gpu("NVIDIA L40").name == "L40"
    assert M.peak_tflops("NVIDIA L40", "bf16") != M.peak_tflops("NVIDIA L4", "bf16")
    # a name that only contains a known one is not that GPU
    assert M.gpu("NVIDIA H100") is None and M.gpu("H100") is None
    names = [n.casefold() for g in M.gpus for n in g.match]
    assert len(names) == len(set(names))
    # whitespace and case as a driver may print them
    assert M.gpu("  nvidia  l40s ").name == "L40S"


def test_unknown_gpu_says_to_add_it_to_the_matrix():
    look = M.peak_lookup("NVIDIA Quantum X9", "bf16")
    assert look.tflops is None
    assert look.reason == "unknown GPU 'NVIDIA Quantum X9': add it to matrix.yaml"
    t4 = M.peak_lookup("Tesla T4", "bf16")
    assert t4.tflops is None and "no dense bf16 peak for T4" in t4.reason


def test_a_mig_slice_is_scaled_by_its_share_of_the_sms():
    # an H100 SXM 1g.10gb slice has 16 of the 132 SMs (nvidia-smi mig -lgip; CUDA's multiProcessorCount)
    look = M.peak_lookup("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bf16", sm_count=16)
    assert look.row.name == "H100-SXM" and look.mig_profile == "1g.10gb"
    assert look.tflops == pytest.approx(989.4 * 16 / 132)
    a100 = M.peak_lookup("NVIDIA A100-SXM4-40GB MIG 3g.20gb", "bf16", sm_count=42)
    assert a100.tflops == pytest.approx(312.0 * 42 / 108)
    # without the slice's SM count the whole GPU's peak would be a lie: refused, with the reason
    refused = M.peak_lookup("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bf16")
    assert refused.tflops is None and "MIG slice 1g.10gb of H100-SXM" in refused.reason
    assert M.peak_lookup("NVIDIA GB200 MIG 1g.23gb", "bf16", sm_count=18).tflops is None


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
