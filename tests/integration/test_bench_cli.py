"""`envkit bench` as a user runs it: exit codes, --json, --out, --plot, compare."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from envkit.bench import matmul as matmul_module
from envkit.bench.kernels import NumpyKernel
from envkit.bench.report import load_document, validate
from envkit.cli import app

runner = CliRunner()
TINY = ["--m", "64", "--n", "48", "--k", "32", "--warmup", "0", "--min-time", "0"]


def test_matmul_json_out_and_plot(tmp_path):
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    result = runner.invoke(
        app,
        [
            "bench",
            "matmul",
            "--backend",
            "numpy",
            "--dtype",
            "fp32",
            *TINY,
            "--json",
            "--out",
            str(out),
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert validate(printed) == []
    assert load_document(out)["results"][0]["shapes"][0]["status"] == "ok"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_matmul_table_for_people():
    result = runner.invoke(app, ["bench", "matmul", "-b", "numpy,torch", "-d", "fp32", *TINY])
    assert result.exit_code == 0, result.output
    assert "best shape" in result.stdout and "64x48x32" in result.stdout
    assert "peak: n/a (no dense peak is known for CPUs" in result.stdout


class _Wrong(NumpyKernel):
    def run(self) -> None:
        super().run()
        self.c *= 1.5


def test_a_wrong_product_exits_1(monkeypatch):
    monkeypatch.setattr(matmul_module, "kernel_class", lambda backend: _Wrong)
    result = runner.invoke(app, ["bench", "matmul", "-b", "numpy", "-d", "fp32", *TINY, "--json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["summary"]["failures"] == 1 and doc["results"][0]["shapes"][0]["tflops"] is None


class _CtrlCOnSecondShape(NumpyKernel):
    def run(self) -> None:
        if self.shape.m == 96:
            raise KeyboardInterrupt
        super().run()


def test_ctrl_c_prints_the_best_so_far_and_exits_130(monkeypatch, tmp_path):
    monkeypatch.setattr(matmul_module, "kernel_class", lambda backend: _CtrlCOnSecondShape)
    out = tmp_path / "partial.json"
    result = runner.invoke(
        app,
        [
            "bench",
            "matmul",
            "-b",
            "numpy",
            "-d",
            "fp32",
            "--m",
            "64,96",
            "--warmup",
            "0",
            "--min-time",
            "0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 130
    assert "interrupted" in result.stdout and "64x64x64" in result.stdout
    assert load_document(out)["interrupted"] is True


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["matmul", "-b", "numpy", "-d", "bf16"], "bf16 is not available for numpy"),
        (["matmul", "-b", "numpy", "-d", "fp7"], "unknown dtype"),
        (["matmul", "-b", "cupy"], "unknown backend cupy; choose from numpy, pytorch, tensorflow"),
        (["matmul", "-b", "numpy", "--device", "tpu"], "--device 'tpu' is not one of auto, cpu, gpu"),
        (["allreduce", "--timeout", "0"], "--timeout must be > 0"),
        (["matmul", "-b", "numpy", "--m", "0"], "--m must be positive"),
        (["matmul", "-b", "numpy", "--m", "-64"], "--m must be positive"),
        (["matmul", "-b", "numpy", "--preset", "huge"], "--preset"),
        (["matmul", "-b", "numpy", "--device", "gpu"], "CPU only"),
        (["memory", "--size-mib", "0"], "--size-mib must be positive"),
        (["allreduce", "--max-size", "zero"], "--max-size"),
        (["compare", "/nonexistent/a.json", "/nonexistent/b.json"], "no such file"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_compare_two_runs_and_garbage(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for path in (a, b):
        result = runner.invoke(
            app, ["bench", "matmul", "-b", "numpy", "-d", "fp32", *TINY, "--out", str(path)]
        )
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["bench", "compare", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r for r in json.loads(result.stdout)["rows"]}
    row = rows["numpy cpu fp32 64x48x32"]
    assert row["ratio"] == pytest.approx(row["b"] / row["a"])
    table = runner.invoke(app, ["bench", "compare", str(a), str(b)])
    assert table.exit_code == 0 and "b / a" in table.stdout
    garbage = tmp_path / "g.json"
    garbage.write_text("]]")
    bad = runner.invoke(app, ["bench", "compare", str(a), str(garbage)])
    assert bad.exit_code == 2 and "not JSON" in bad.output


def test_memory_cpu_json(tmp_path):
    result = runner.invoke(app, ["bench", "memory", "--device", "cpu", "--size-mib", "64", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["results"][0]["test"] == "host_copy" and doc["results"][0]["gbps"]["median"] > 0


def test_compare_reads_a_result_written_before_the_vocabulary_change(tmp_path):
    """tests/data/bench/legacy_matmul_v1_torch.json was written by the envkit before
    ("schema": "envkit.bench", backend "torch"); today's `-b torch` writes "pytorch"."""
    from pathlib import Path

    legacy = Path(__file__).resolve().parent.parent / "data" / "bench" / "legacy_matmul_v1_torch.json"
    new = tmp_path / "new.json"
    result = runner.invoke(
        app, ["bench", "matmul", "-b", "torch,numpy", "-d", "fp32", *TINY, "--out", str(new)]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(new.read_text())
    assert written["schema"] == "envkit.bench/v1"
    assert [r["backend"] for r in written["results"]] == ["pytorch", "numpy"]
    result = runner.invoke(app, ["bench", "compare", str(legacy), str(new), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r for r in json.loads(result.stdout)["rows"]}
    for metric in ("pytorch cpu fp32 64x48x32", "numpy cpu fp32 64x48x32"):
        assert rows[metric]["a"] > 0 and rows[metric]["b"] > 0, rows
    assert not any(metric.startswith("torch ") for metric in rows)
