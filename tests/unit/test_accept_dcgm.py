"""Reading `dcgmi diag -j`: both JSON shapes DCGM has used, and statuses it may print.

The 3.x document below follows the layout documented in DCGM's own source
(NvvsCommon.h / JsonOutput.cpp: "DCGM GPU Diagnostic" -> test_categories ->
tests -> results with gpu_ids and PASS|FAIL|WARN|SKIPPED, nulls between tests,
and a warning line printed before the JSON). The 4.x shape lifts "tests" to the
top and names each result's entity.
"""

from __future__ import annotations

import json

from envkit.accept.dcgm import judge_diag, parse_diag_json
from envkit.vocab import Status

DCGM3_PASS = """WARNING: THIS SHOULD NOT HAPPEN
{
  "DCGM GPU Diagnostic": {
    "test_categories": [
      {"category": "Deployment", "tests": [
        {"name": "Denylist", "results": [{"gpu_ids": "0,1", "status": "PASS"}]},
        null,
        {"name": "NVML Library", "results": [{"gpu_ids": "0,1", "status": "PASS"}]},
        {"name": "Persistence Mode", "results": [{"gpu_ids": "0,1", "status": "PASS"}]}
      ]},
      {"category": "Integration", "tests": [
        {"name": "PCIe", "results": [{"gpu_ids": "0", "status": "PASS"}, {"gpu_ids": "1", "status": "PASS"}]}
      ]},
      {"category": "Hardware", "tests": [
        {"name": "GPU Memory", "results": [{"gpu_ids": "0", "status": "PASS"},
                                            {"gpu_ids": "1", "status": "SKIPPED",
                                             "info": ["Test skipped: not supported"]}]}
      ]}
    ],
    "version": "3.3.7"
  }
}
"""


def _dcgm3_with(status: str, warnings: list[str] | None = None) -> str:
    doc = json.loads(DCGM3_PASS[DCGM3_PASS.index("{") :])
    result = doc["DCGM GPU Diagnostic"]["test_categories"][1]["tests"][0]["results"][1]
    result["status"] = status
    if warnings:
        result["warnings"] = warnings
    return json.dumps(doc)


def test_dcgm3_all_pass_reads_every_test() -> None:
    tests, version = parse_diag_json(DCGM3_PASS)
    assert version == "3.3.7"
    assert [t.name for t in tests] == ["Denylist", "NVML Library", "Persistence Mode", "PCIe", "GPU Memory"]
    outcome = judge_diag(tests, returncode=0, version=version)
    assert outcome.status == Status.OK
    assert outcome.summary == "all 5 DCGM tests passed"


def test_dcgm3_failed_gpu_fails_with_dcgms_words() -> None:
    text = _dcgm3_with("FAIL", ["GPU 1 PCIe replay count exceeded threshold"])
    outcome = judge_diag(*parse_diag_json(text)[:1], returncode=226)
    assert outcome.status == Status.FAIL
    assert "PCIe: GPU 1 PCIe replay count exceeded threshold" in outcome.summary


def test_unknown_status_is_never_a_pass() -> None:
    outcome = judge_diag(parse_diag_json(_dcgm3_with("Incomplete"))[0], returncode=0)
    assert outcome.status == Status.WARN
    assert "PCIe" in outcome.summary


def test_dcgm4_tests_at_the_top_level() -> None:
    text = json.dumps(
        {
            "DCGM Diagnostic": {
                "version": "4.2.3",
                "tests": [
                    {"name": "software", "results": [{"entity_id": 0, "status": "Pass"}]},
                    {
                        "name": "memory",
                        "results": [
                            {"entity_id": 0, "status": "Pass"},
                            {
                                "entity_id": 1,
                                "status": "Fail",
                                "warnings": [{"warning": "DBE detected", "error_id": 12}],
                            },
                        ],
                    },
                ],
            }
        }
    )
    tests, version = parse_diag_json(text)
    assert version == "4.2.3"
    assert tests[1].results == {"0": "ok", "1": "fail"}
    outcome = judge_diag(tests, returncode=1)
    assert outcome.status == Status.FAIL and "memory: DBE detected" in outcome.summary


def test_nothing_ran_is_an_error_not_a_pass() -> None:
    tests, _ = parse_diag_json('{"DCGM GPU Diagnostic": {"version": "4.2.3"}}')
    assert judge_diag(tests, returncode=1).status == Status.ERROR
    skipped_only = '{"tests": [{"name": "memory", "results": [{"status": "Skip"}]}]}'
    assert judge_diag(parse_diag_json(skipped_only)[0], returncode=0).status == Status.ERROR


def test_no_document_is_a_value_error() -> None:
    import pytest

    with pytest.raises(ValueError, match="no JSON"):
        parse_diag_json("Error: unable to connect to host engine")
