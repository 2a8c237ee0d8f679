"""Accept's expected-figure floors come from the matrix and judge measurements as documented."""

from __future__ import annotations

from envkit.accept.steps import AcceptOptions, _against, expected_figure, run_step, step_dcgm, step_peer
from envkit.matrix import load_matrix
from envkit.vocab import Status


def test_every_floor_names_a_gpu_row_and_stays_below_the_datasheet() -> None:
    matrix = load_matrix()
    rows = {r.name for r in matrix.gpus}
    floors = matrix.raw["accept_expected"]["gpus"]
    assert floors, "accept_expected has no rows"
    for floor in floors:
        assert floor["name"] in rows, floor
        # a floor is what a healthy node clears: always below one NVLink direction / the HBM peak
        assert floor["busbw_gbps"] < floor["p2p_gbps"] / 0.8


def test_floor_lookup_by_exact_nvml_name() -> None:
    assert expected_figure("hbm", "NVIDIA H100 80GB HBM3")[0] == 2680.0
    assert expected_figure("p2p", "NVIDIA H200")[0] == 360.0
    # a PCIe board and an unknown GPU get no floor: measured, not judged
    assert expected_figure("p2p", "NVIDIA H100 PCIe") == (None, None)
    assert expected_figure("hbm", "NVIDIA Imaginary 9000") == (None, None)


def test_against_applies_the_tolerance() -> None:
    assert _against(2450.0, 2680.0, 0.10, "gpu0 d2d")[0] == Status.OK  # 91 %
    status, line = _against(2300.0, 2680.0, 0.10, "gpu3 d2d")  # 86 %
    assert status == Status.FAIL and "86% of the expected 2680 GB/s" in line
    assert _against(1.0, None, 0.10, "cpu host_copy")[0] == Status.OK


def test_gpu_only_steps_are_not_applicable_on_a_cpu_node() -> None:
    opts = AcceptOptions(device="cpu")
    assert step_peer(opts).status == Status.NOT_APPLICABLE
    assert step_dcgm(opts).status == Status.NOT_APPLICABLE
    assert run_step("train", AcceptOptions(device="cpu", train=True)).status == Status.NOT_APPLICABLE


def test_a_crashing_step_is_an_error_row(monkeypatch) -> None:
    import envkit.accept.steps as steps

    def boom(opts):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(steps.STEP_FUNCTIONS, "peer", boom)
    step = run_step("peer", AcceptOptions(device="gpu"))
    assert step.status == Status.ERROR and "illegal memory access" in step.summary
