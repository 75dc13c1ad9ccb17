"""Process-wide tuning of a server process (`service.app.tune_interpreter`), run in a child process so
the test process keeps Python's defaults."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from onnx_models import classifier_model, write_model

CHILD = textwrap.dedent("""
    import asyncio, gc, json, sys
    from asgi_lifespan import LifespanManager
    from service import app as service_app
    from service.settings import Settings

    tuned = sys.argv[2] == "tuned"
    if tuned:
        service_app.tune_interpreter()

    async def main():
        settings = Settings(model_repository=sys.argv[1], providers=["CPUExecutionProvider"])
        app = service_app.create_app(settings)
        async with LifespanManager(app, startup_timeout=60):
            ready = app.state.registry.get("clf").name
            print(json.dumps({"threshold": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                              "switch": sys.getswitchinterval(), "ready": ready}))

    asyncio.run(main())
""")


def run_child(repo: Path, mode: str) -> dict[str, object]:
    result = subprocess.run([sys.executable, "-c", CHILD, str(repo), mode], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_a_server_process_freezes_its_start_up_heap_and_collects_young_objects_less_often(repo: Path) -> None:
    write_model(repo, "clf", classifier_model())
    tuned = run_child(repo, "tuned")
    assert tuned["ready"] == "clf"
    assert tuned["threshold"] == [20_000, 20, 50]
    assert isinstance(tuned["frozen"], int) and tuned["frozen"] > 10_000  # FastAPI, pydantic, the session
    assert tuned["switch"] == 0.0005
    plain = run_child(repo, "plain")  # create_app alone (as tests and embedders call it) changes nothing
    assert plain["threshold"] == list(__import__("gc").get_threshold())
    assert plain["frozen"] == 0
