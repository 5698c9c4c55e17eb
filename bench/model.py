"""The fake model for the benchmark, in a process of its own: `python -m bench.model --port P`.

It is the test suite's `DemoModel` (an OpenAI-compatible streaming server) under uvicorn,
so the service and the direct baseline talk to the same thing over real HTTP, and its CPU
is never counted as the service's.
"""

from __future__ import annotations

import argparse

import uvicorn

from bench.limits import raise_open_files
from personachat.demo_model import DemoModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_open_files()
    model = DemoModel(record=False, directives=True)
    uvicorn.run(
        model.app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=4096,
        timeout_keep_alive=60,
    )


if __name__ == "__main__":
    main()
