"""Each extra alone, in a fresh venv: it installs, its public names import, one call works.

Every venv gets exactly the versions this suite runs with (the current environment is the
constraint), so the check runs on whichever lock the suite was installed from. The emulator
runs in this process; the venvs reach it through the environment, as a user's would.
A feature whose extra is missing raises an ``ImportError`` that names the extra.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llamavision.emulator import EmulatorServer

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "examples" / "images" / "red-square.png"

pytestmark = pytest.mark.slow

MISSING = """
import importlib
import llamavision.errors as errors
for module, extra in {missing!r}:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        assert isinstance(exc, errors.MissingExtraError), repr(exc)
        assert f"pip install 'llamavision[{{extra}}]'" in str(exc), str(exc)
    else:
        raise AssertionError(f"{{module}} imported without the {{extra}} extra")
"""

CORE = """
from llamavision import LlamaVisionClient, Message
with LlamaVisionClient() as client:
    answer = client.chat(Message.user("Describe it", image={image!r}))
assert "640x480 PNG" in answer.text, answer.text
"""

# what each extra is for, as a user would first try it
USES = {
    "": CORE,
    "langchain": """
from langchain_llamavision import CaptionLoader, ChatLlamaVision
print(ChatLlamaVision().invoke("hi").content)
""",
    "llamaindex": """
from llamaindex_llamavision import CaptionReader, LlamaVision, LlamaVisionMultiModal
print(LlamaVision().complete("hi").text)
""",
    "otel": CORE
    + """
from opentelemetry import trace
from llamavision import tracing
assert tracing.trace is trace
""",
    "emulator": """
from llamavision import LlamaVisionClient
from llamavision.emulator import EmulatorServer
with EmulatorServer() as server, LlamaVisionClient(
    base_url=server.env()["AIGATEWAY_BASE_URL"], api_key=server.env()["AIGATEWAY_API_KEY"]
) as client:
    assert "emulator" in client.chat("hi").text
""",
    "ray": """
import ray
from llamavision.ray import caption_dataset
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    images = ray.data.read_binary_files({image!r}, include_paths=True)
    rows = caption_dataset(images, actors=1).take_all()
finally:
    ray.shutdown()
assert len(rows) == 1 and rows[0]["error"] is None and "640x480 PNG" in rows[0]["caption"], rows
""",
    "rag": """
from langchain_llamavision import WordLlamaEmbeddings
from llamaindex_llamavision import WordLlamaEmbedding
from llamavision import rag
assert len(WordLlamaEmbeddings().embed_query("a red square")) == 256
assert len(WordLlamaEmbedding().get_text_embedding("a blue circle")) == 256
rag.ensure_collection(rag.local_qdrant("index"), "captions", 256)
""",
}

# what a missing extra must say, for the modules that need one
NEEDS = {
    "langchain_llamavision": "langchain",
    "llamaindex_llamavision": "llamaindex",
    "llamavision.ray": "ray",
}
# the extras that bring others with them
BRINGS = {"rag": {"langchain", "llamaindex"}}


@pytest.fixture(scope="module")
def constraints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return this environment's versions, the constraints every venv installs with."""
    frozen = subprocess.run(
        [sys.executable, "-m", "uv", "pip", "freeze", "--python", sys.executable],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = tmp_path_factory.mktemp("constraints") / "constraints.txt"
    path.write_text("\n".join(line for line in frozen.splitlines() if not line.startswith("-e ")))
    return path


@pytest.mark.parametrize("extra", list(USES), ids=lambda extra: extra or "core")
def test_each_extra_alone_installs_and_works(
    extra: str, constraints: Path, tmp_path: Path, emulator_server: EmulatorServer
) -> None:
    venv = tmp_path / "venv"
    uv = [sys.executable, "-m", "uv"]
    subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    target = f"{ROOT}[{extra}]" if extra else str(ROOT)
    installed = subprocess.run(
        [
            *uv,
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            "-c",
            str(constraints),
            target,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    brought = {extra, *BRINGS.get(extra, ())}
    missing = [(module, needed) for module, needed in NEEDS.items() if needed not in brought]
    script = MISSING.format(missing=missing) + USES[extra].format(image=str(IMAGE))
    env = {**os.environ, **emulator_server.env(), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", textwrap.dedent(script)],
        cwd=tmp_path,  # not the repository: the installed package must be what imports
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
