"""The peer: LiteLLM proxy in its own venv (bench/.venv-litellm), routed to the same mock, set up as README.md says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from servers import BRIDGE_KEY, HERE, Server, clean_environ

VENV = HERE / ".venv-litellm"
MASTER_KEY = "sk-bench-litellm"
INSTALL_TIMEOUT = 1500.0


def version(venv: Path = VENV) -> str | None:
    """Return the installed litellm version, or None."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def install(venv: Path = VENV, log: Path | None = None) -> None:
    """Create the venv and `pip install 'litellm[proxy]'` into it (bounded); raise RuntimeError when it fails."""
    log = log or HERE / ".cache" / "litellm-install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        for step in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "litellm[proxy]"],
        ):
            try:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{' '.join(step[-2:])} took over {INSTALL_TIMEOUT:.0f} s (see {log})") from None
            if done.returncode:
                raise RuntimeError(f"{' '.join(step[-2:])} exited {done.returncode} (see {log})")


class LiteLLM(Server):
    """`litellm --config ... --num_workers N`: no database, spend and error logs off, message logging off."""

    name = "litellm"
    key = MASTER_KEY

    def __init__(self, mock_port: int, workers: int = 2, venv: Path = VENV) -> None:
        super().__init__()
        self.mock_port, self.workers, self.venv = mock_port, workers, venv
        self.version = version(venv)
        self.label = f"LiteLLM proxy {self.version or '?'}, uvicorn --num_workers {workers}, no DB, logging off"
        self.config_path: Path | None = None

    def config(self) -> dict:
        """Return the proxy config (JSON is YAML): both benchmark models as openai/<id> at the mock."""
        models = [
            {
                "model_name": name,
                "litellm_params": {
                    "model": f"openai/{name}",
                    "api_base": f"http://127.0.0.1:{self.mock_port}/v1",
                    "api_key": BRIDGE_KEY,
                },
            }
            for name in ("bench", "bench-paced", "bench-long")
        ]
        return {
            "model_list": models,
            "litellm_settings": {"telemetry": False, "turn_off_message_logging": True, "set_verbose": False},
            "general_settings": {"master_key": MASTER_KEY, "disable_spend_logs": True, "disable_error_logs": True},
        }

    def spawn(self, workdir: Path, cpus: set[int] | None = None) -> None:
        """Write the config and start the proxy without waiting (start-up takes 10-45 s)."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "litellm.yaml"
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        super().spawn(workdir, cpus)

    def command(self) -> list[str]:
        return [
            str(self.venv / "bin" / "litellm"),
            "--config",
            str(self.config_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--num_workers",
            str(self.workers),
        ]

    def environ(self) -> dict[str, str]:
        return {
            **clean_environ(),
            "LITELLM_MASTER_KEY": MASTER_KEY,
            # Otherwise it downloads a model cost map at start (no network here).
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
        }

    def ready_path(self) -> str:
        return "/health/liveliness"
