"""/openapi.json tells the truth: schemathesis sends what it describes (and what it does not)
to a real uvicorn server, and every answer must match the schema: valid input accepted,
invalid input refused with a documented status, every error `{"code", "detail"}`, `Allow`
listing every method of a path.

Bounded: a few dozen examples per operation, a fixed seed, a timeout per request. Sessions
made up by the generator do not exist, so no stream is opened (404 first).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import ROOT, Service
from tests.test_identity import create_api_key

CONFIG = Path(__file__).with_name("schemathesis.toml")
SEED = "246767521268177408395400424585917470224"


def test_every_operation_answers_as_its_schema_says(make_service: Callable[..., Service]) -> None:
    service = make_service(rate_limit_per_minute=0)
    _run_schemathesis(service)


def test_the_openai_api_answers_as_its_schema_says_to_an_api_key(make_service: Callable[..., Service]) -> None:
    # Without a key every /v1 request is a 401: with one, its bodies are answered too.
    service = make_service(rate_limit_per_minute=0)
    key = create_api_key(service, "schemathesis")
    _run_schemathesis(service, "--include-path-regex", "^/v1/", "-H", f"Authorization: Bearer {key}")


def _run_schemathesis(service: Service, *options: str) -> None:
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run"]
    command += [service.base_url + "/openapi.json"]
    command += ["--max-examples", "30", "--seed", SEED, "--request-timeout", "10", "--no-color", *options]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.web.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
