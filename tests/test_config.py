"""The configuration's edge: `--help` of the commands that take a profile lists every field."""

from __future__ import annotations

import dataclasses
import re

import pytest

from opsd.config import OPSDConfig, field_names, fields_help


def test_fields_help_lists_every_field_once_with_its_default_and_meaning():
    text = fields_help(OPSDConfig)
    listed = re.findall(r"^  (\w+)=$", text, flags=re.MULTILINE)
    assert sorted(listed) == field_names(OPSDConfig) and len(listed) == len(set(listed))
    entries = {key: " ".join(entry.split())  # the entry's wrapped lines as one
               for key, entry in zip(listed, re.split(r"^  \w+=\n", text, flags=re.MULTILINE)[1:], strict=True)}
    assert all(not entry.startswith("(default") for entry in entries.values())  # a meaning for each
    assert "(default: 'smollm2-135m-instruct')" in entries["model_name"]
    assert "(default: True)" in entries["fast_inference"] and "(default: 0.999)" in entries["ema_decay"]
    defaults = {f.name: f.default for f in dataclasses.fields(OPSDConfig) if f.default is not dataclasses.MISSING}
    assert f"(default: {defaults['learning_rate']!r})" in entries["learning_rate"]


@pytest.mark.parametrize("command", ["train", "sft", "grpo"])
def test_command_help_lists_the_configuration_fields(command, capsys):
    from opsd.__main__ import main as cli

    with pytest.raises(SystemExit) as done:
        cli([command, "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert " ".join(out.split()).startswith(f"usage: python -m opsd {command} [-h] [--config CONFIG] [--no-resume] "
                                            "[key=value ...]")
    assert "configuration fields" in out and "\n  model_name=\n" in out and "\n  lora_r=\n" in out
