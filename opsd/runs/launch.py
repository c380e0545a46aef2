"""Starting runs from notebooks: parameter validation, in-kernel training, `accelerate launch`.

`reproduce/*.ipynb` are papermill notebooks; papermill only warns about parameters a notebook does
not declare, so `check_notebook_parameters` turns that into an error naming the valid ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from opsd.config import REPO_ROOT, OPSDConfig, check_keys, profile_path, read_profile

ACCELERATE_DIR = REPO_ROOT / "reproduce" / "accelerate"
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def check_notebook_parameters(namespace: Mapping[str, Any], before_injection: Iterable[str], valid: Iterable[str]) -> None:
    """Raise ValueError if papermill injected a name the parameters cell does not declare.

    `before_injection`: the notebook's global names at the end of its parameters cell.
    """
    known = set(before_injection) | set(valid) | _IPYTHON_NAMES
    unknown = sorted(n for n in namespace if n not in known and not n.startswith("_"))
    if unknown:
        raise ValueError(f"unknown notebook parameter(s) {unknown}; valid parameters: {sorted(valid)}")


def train_command(profile: str, overrides: Mapping[str, Any], num_processes: int, accelerate_config: str | None = None,
                  extra_env: Mapping[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch ... -m opsd train` command line and environment for a multi-process run."""
    import yaml

    data = read_profile(profile)
    config_name = accelerate_config or data.get("accelerate_config", "ddp")
    config_file = ACCELERATE_DIR / f"{config_name}.yaml"
    if not config_file.exists():
        valid = sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml"))
        raise ValueError(f"unknown accelerate config {config_name!r}; valid: {valid}")
    env = dict(os.environ)
    if config_name.startswith("cpu"):
        # `accelerate launch --cpu --num_processes N` was seen to start a single process; torchrun with
        # ACCELERATE_USE_CPU=true starts N real gloo ranks that accelerate picks up as MULTI_CPU.
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
               "--num_processes", str(num_processes)]
    cmd += ["-m", "opsd", "train", "--config", str(profile)]
    for key, value in overrides.items():
        cmd.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    env.update(extra_env or {})
    return cmd, env


def stream_command(cmd: list[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> int:
    """Run a command, printing its output line by line as it arrives; raise on a non-zero exit."""
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env=dict(env) if env else None, cwd=cwd or REPO_ROOT)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
    code = proc.wait()
    if code != 0:
        raise RuntimeError(f"command failed with exit code {code}: {' '.join(cmd)}")
    return code


def resolve_train_overrides(profile: str, overrides: Mapping[str, Any] | None, *, output_dir=None, max_steps=None,
                            seed=None) -> dict[str, Any]:
    """Merge the notebook's convenience parameters into `overrides` and validate every key."""
    profile_path(profile)  # an unknown profile: an error listing the valid ones
    merged = dict(overrides or {})
    for key, value in (("output_dir", output_dir), ("max_steps", max_steps), ("seed", seed)):
        if value is not None:
            merged[key] = value
    check_keys(OPSDConfig, merged, "override")
    return merged
