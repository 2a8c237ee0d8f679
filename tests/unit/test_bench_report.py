"""The result document: schema, atomic writes, reading back, compare."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from envkit.bench.compare import compare_documents
from envkit.bench.errors import BenchInputError
from envkit.bench.report import (
    BENCHMARK_VERSION,
    ReportError,
    atomic_write_bytes,
    load_document,
    new_document,
    normalize_document,
    validate,
    write_document,
)


def _matmul_doc(median: float) -> dict:
    doc = new_document("matmul")
    doc["results"] = [
        {
            "backend": "numpy",
            "device": "cpu",
            "device_kind": "cpu",
            "device_name": "cpu",
            "dtype": "fp32",
            "status": "ok",
            "message": None,
            "layout": "nn",
            "shapes": [
                {
                    "m": 64,
                    "n": 64,
                    "k": 64,
                    "status": "ok",
                    "tflops": {"median": median, "mean": median, "max": median, "min": median},
                    "correctness": {"rel_error": 1e-7, "bound": 1e-5, "passed": True},
                },
            ],
            "best": {"shape": "64x64x64", "tflops": median},
            "geomean_tflops": median,
            "peak_tflops": None,
            "peak_reason": "CPU",
            "efficiency": None,
            "throttled": None,
        }
    ]
    doc["summary"] = {"status": "ok"}
    return doc


def test_new_document_is_valid_and_versioned():
    doc = new_document("memory")
    assert doc["benchmark_version"] == BENCHMARK_VERSION and doc["schema_version"] == 1
    assert validate(doc) == []
    assert validate(_matmul_doc(0.01)) == []


def test_schema_catches_what_a_reader_relies_on():
    doc = _matmul_doc(0.01)
    doc["results"][0]["peak_reason"] = None  # a null peak must say why
    assert any("peak_reason" in p or "None is not of type 'string'" in p for p in validate(doc))
    doc = _matmul_doc(0.01)
    doc["results"][0]["shapes"][0]["tflops"]["median"] = -1.0
    assert validate(doc)
    doc = _matmul_doc(0.01)
    del doc["benchmark_version"]
    assert validate(doc)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sub" / "r.json"
    write_document(_matmul_doc(0.02), target)
    assert load_document(target)["results"][0]["best"]["tflops"] == 0.02

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert json.loads(target.read_text())["results"][0]["best"]["tflops"] == 0.02  # the old file survives
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]  # no temp file left behind


def test_load_errors_are_one_line_reasons(tmp_path):
    with pytest.raises(ReportError, match="no such file"):
        load_document(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match="not JSON"):
        load_document(bad)
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ReportError, match="not an envkit bench result"):
        load_document(other)
    future = tmp_path / "future.json"
    doc = _matmul_doc(0.01)
    doc["schema_version"] = 99
    future.write_text(json.dumps(doc))
    with pytest.raises(ReportError, match="schema version 99"):
        load_document(future)


def test_compare_ratios_side_by_side():
    a, b = _matmul_doc(0.010), _matmul_doc(0.015)
    result = compare_documents(a, b)
    rows = {r["metric"]: r for r in result["rows"]}
    assert rows["numpy cpu fp32 64x64x64"]["ratio"] == pytest.approx(1.5)
    assert rows["numpy cpu fp32 best"]["ratio"] == pytest.approx(1.5)
    assert result["unit"] == "TFLOP/s" and result["note"] is None
    c = copy.deepcopy(b)
    c["benchmark_version"] = BENCHMARK_VERSION + 1
    assert "method changed" in compare_documents(a, c)["note"]
    with pytest.raises(BenchInputError, match="cannot compare"):
        compare_documents(a, new_document("memory"))


def test_compare_allreduce_uses_busbw_and_algbw_on_one_rank():
    def doc(world, algbw):
        d = new_document("allreduce")
        busbw = algbw * 2 * (world - 1) / world
        d["results"] = [
            {
                "bytes": 1024,
                "seconds": 1.0,
                "algbw_gbps": algbw,
                "busbw_gbps": busbw,
                "correct": True,
                "world_size": world,
            }
        ]
        return d

    assert compare_documents(doc(4, 10.0), doc(4, 20.0))["rows"][0]["ratio"] == pytest.approx(2.0)
    assert compare_documents(doc(1, 10.0), doc(1, 5.0))["rows"][0]["ratio"] == pytest.approx(0.5)


LEGACY = Path(__file__).resolve().parent.parent / "data" / "bench" / "legacy_matmul_v1_torch.json"


def test_a_document_written_before_the_vocabulary_change_is_read_in_todays_words():
    """tests/data/bench/legacy_matmul_v1_torch.json: written by envkit before the change
    ("schema": "envkit.bench", backend "torch"); it must still load and compare."""
    raw = json.loads(LEGACY.read_text())
    assert raw["schema"] == "envkit.bench" and raw["results"][0]["backend"] == "torch"
    doc = load_document(LEGACY)
    assert doc["schema"] == "envkit.bench/v1"
    assert [r["backend"] for r in doc["results"]] == ["pytorch", "numpy"]
    assert "pytorch" in doc["context"]["frameworks"] and "torch" not in doc["context"]["frameworks"]
    assert doc["options"]["backends"] == ["pytorch", "numpy"]


def test_new_documents_carry_the_one_format_id_style(tmp_path):
    doc = new_document("memory")
    assert doc["schema"] == "envkit.bench/v1"
    matmul = _matmul_doc(0.01)
    matmul["results"][0]["backend"] = "torch"  # what the matmul engine says internally
    target = tmp_path / "new.json"
    write_document(normalize_document(matmul), target)
    assert json.loads(target.read_text())["results"][0]["backend"] == "pytorch"


def test_compare_reads_a_legacy_document_against_a_new_one():
    old = load_document(LEGACY)
    new = normalize_document(copy.deepcopy(json.loads(LEGACY.read_text())))
    new["schema"] = "envkit.bench/v1"
    rows = {r["metric"]: r for r in compare_documents(old, new)["rows"]}
    row = rows["pytorch cpu fp32 64x48x32"]
    assert row["ratio"] == pytest.approx(1.0)
