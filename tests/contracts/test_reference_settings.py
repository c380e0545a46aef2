"""Every paper profile against the reference's settings, written once in reproduce/reference_settings.yaml.

A setting holds the reference's value unless the file names a `kit:` value with a `why:`; each such difference
is listed in REPRODUCING.md's table of what differs from the reference implementation."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import yaml

from opsd.baselines.grpo import GRPORunConfig
from opsd.baselines.sft import SFTRunConfig
from opsd.config import REPO_ROOT, OPSDConfig
from opsd.eval.cli import load_eval_profile
from opsd.runs.preflight import config_values

SETTINGS = yaml.safe_load((REPO_ROOT / "reproduce" / "reference_settings.yaml").read_text(encoding="utf-8"))
GROUPS = ("opsd", "sft", "grpo", "eval")
CLASSES = {"OPSDConfig": OPSDConfig, "SFTRunConfig": SFTRunConfig, "GRPORunConfig": GRPORunConfig}


def profile_values(group: str, profile: str) -> dict:
    """What a profile sets, with its config class's defaults for the keys it leaves out."""
    spec = SETTINGS[group]
    if spec["class"] == "eval":
        return dataclasses.asdict(load_eval_profile(profile))
    return config_values(CLASSES[spec["class"]], profile)


def for_profile(value, profile: str, profiles) -> object:
    """A setting's value for one profile: one value for all, or a mapping profile -> value."""
    if isinstance(value, dict) and set(value) <= set(profiles) and profile in value:
        return value[profile]
    return value


def same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-12)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


CASES = [(group, profile) for group in GROUPS for profile in SETTINGS[group]["profiles"]]


def test_the_file_covers_every_paper_profile():
    profiles = {p for group in GROUPS for p in SETTINGS[group]["profiles"]}
    on_disk = {p.stem for p in (REPO_ROOT / "reproduce" / "configs").glob("*.yaml") if "cpu-tiny" not in p.stem}
    assert profiles == on_disk
    for group in GROUPS:
        for key, setting in SETTINGS[group]["settings"].items():
            assert "reference" in setting and setting.get("from"), (group, key)
            assert ("kit" in setting) == ("why" in setting), f"{group}.{key}: a kit value needs its why"


@pytest.mark.parametrize(("group", "profile"), CASES)
def test_profile_matches_the_reference_or_names_why_not(group, profile):
    values = profile_values(group, profile)
    profiles = SETTINGS[group]["profiles"]
    wrong = []
    for key, setting in SETTINGS[group]["settings"].items():
        expected = for_profile(setting["kit"] if "kit" in setting else setting["reference"], profile, profiles)
        if key not in values:
            wrong.append(f"{key}: not a field")
        elif not same(values[key], expected):
            wrong.append(f"{key}: profile {values[key]!r}, expected {expected!r}")
    assert not wrong, f"{profile}: " + "; ".join(wrong)


def test_every_difference_is_in_reproducings_table():
    text = (REPO_ROOT / "reproduce" / "REPRODUCING.md").read_text(encoding="utf-8")
    section = text.split("## What differs from the reference implementation", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    missing = [f"{group}.{key}" for group in GROUPS for key, setting in SETTINGS[group]["settings"].items()
               if "kit" in setting and not any(re.search(rf"`{key}\b", row) for row in rows)]
    assert not missing, f"differences not in REPRODUCING.md's table: {missing}"
