"""`python -m opsd --help`: every command on its own line with what it does, the profiles grouped by kind."""

from __future__ import annotations

import subprocess
import sys

from opsd.__main__ import COMMANDS
from opsd.__main__ import main as cli
from opsd.config import available_profiles, read_profile


def test_help_lists_each_command_and_the_profiles_by_kind(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for name, (_, what) in COMMANDS.items():
        assert any(line.split() and line.split()[0] == name and what in line for line in lines), name
    assert "preflight" in COMMANDS
    kinds = {}
    for profile in available_profiles():
        kinds.setdefault(read_profile(profile).get("kind", "train"), []).append(profile)
    for kind, names in kinds.items():
        row = next(line for line in lines if line.strip().startswith(f"{kind}:"))
        assert row.split(":", 1)[1].strip().split(", ") == names
    assert set(kinds) == {"train", "sft", "grpo", "eval"}
    assert "qwen3-1.7b-4xh100" in kinds["train"] and "eval-paper" in kinds["eval"]


def test_no_or_unknown_command_prints_the_usage_and_exits_2(capsys):
    assert cli([]) == 2
    assert "commands:" in capsys.readouterr().err
    assert cli(["tran"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'tran'" in err and "profiles (reproduce/configs" in err


def test_preflight_through_python_m_opsd():
    proc = subprocess.run([sys.executable, "-m", "opsd", "preflight", "--config", "cpu-tiny"], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "preflight cpu-tiny (num_processes 1): ready" in proc.stdout
