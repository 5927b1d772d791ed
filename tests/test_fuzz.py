"""Fuzz the live API with schemathesis from its own `/openapi.json`: no input may cause a 5xx.

Every operation gets schema-conforming (positive) and schema-violating (negative) cases, with the
API key, over real HTTP against the app under uvicorn. Bounded by FUZZ_EXAMPLES per operation and
mode (VIDFARM_FUZZ_EXAMPLES overrides it), so the whole run takes well under two minutes.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import API_KEY

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("VIDFARM_FUZZ_EXAMPLES", "100"))
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@pytest.mark.slow
def test_fuzzing_the_api_finds_no_server_error(api, capsys):
    schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]

    def fuzz(operation, mode) -> None:
        label = f"{operation.label} [{mode.value}]"

        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                             phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            counts[label] = counts.get(label, 0) + 1
            response = case.call(base_url=api.url, headers=auth, timeout=30)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])

        try:
            run()
        except Unsatisfiable:
            unfuzzable.append(label)  # nothing to break: e.g. no parameters to make invalid

    unfuzzable: list[str] = []
    for operation in operations:
        for mode in MODES:
            fuzz(operation, mode)

    total = sum(counts.values())
    with capsys.disabled():
        print(f"\nschemathesis {schemathesis.__version__}: {total} cases over {len(operations)} operations "
              f"in {time.monotonic() - started:.0f} s; statuses {dict(sorted(statuses.items()))}")
    assert all("[negative]" in label for label in unfuzzable), unfuzzable
    assert not [code for code in statuses if code >= 500]
    assert total >= len(operations) * 10, counts  # the fuzzer really ran
    assert any(200 <= code < 300 for code in statuses), statuses  # and got past the auth
