"""Whether the files of a checkpoint are whole: what a kill during a save leaves is recognised here.

Each check returns None for a whole file or folder, else a short reason ("adapter_model.safetensors is
cut off (...)"). A safetensors file must have a readable header and exactly the size that header
promises; a torch.save file must be a whole zip archive (its central directory is written last); a
JSON file must parse. `opsd.runs.checkpoints.checkpoint_problem` adds what a complete checkpoint needs besides.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
_MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_MODEL_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def _safetensors_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is cut off ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is cut off (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if size != 8 + n + end:
            return f"{path.name} is cut off ({size} bytes, {8 + n + end} expected)"
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        return f"{path.name} is unreadable ({err})"
    return None


def _torch_file_problem(path: Path) -> str | None:
    try:
        if zipfile.is_zipfile(path):
            return None
        return f"{path.name} is cut off or not a torch file ({path.stat().st_size} bytes)"
    except OSError as err:
        return f"{path.name} is unreadable ({err})"


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{path.name} is cut off or unreadable ({err.__class__.__name__})"
    return None


def file_problem(path: Path) -> str | None:
    """Why a .safetensors, torch (.pt .pth .bin) or .json file is not whole; None for other files."""
    if path.suffix == ".safetensors":
        return _safetensors_problem(path)
    if path.suffix in (".pt", ".pth", ".bin"):
        return _torch_file_problem(path)
    if path.suffix == ".json":
        return _json_problem(path)
    return None


def weights_problem(folder: Path) -> str | None:
    """None if the folder holds whole model weights: a LoRA adapter, a full model (maybe sharded), or a
    DeepSpeed checkpoint (``global_step*/``)."""
    for config, weights in (("adapter_config.json", _ADAPTER_WEIGHTS), ("config.json", _MODEL_WEIGHTS)):
        if not (folder / config).is_file():
            continue
        found = [folder / w for w in weights if (folder / w).is_file()]
        for index in _MODEL_INDEXES if config == "config.json" else ():
            if (folder / index).is_file():
                try:
                    shards = set(json.loads((folder / index).read_text())["weight_map"].values())
                except (OSError, ValueError, KeyError, TypeError):
                    return f"{index} is cut off or unreadable"
                missing = sorted(s for s in shards if not (folder / s).is_file())
                if missing:
                    return f"weight shards {missing} are missing"
                found += [folder / s for s in sorted(shards)]
        if not found:
            return f"{config} is there but no weights file ({', '.join(weights)})"
        for path in [folder / config, *found]:
            problem = file_problem(path)
            if problem:
                return problem
        return None
    if any(p.is_dir() and p.name.startswith("global_step") for p in folder.iterdir()):
        return None  # a DeepSpeed checkpoint: its weights are in global_stepN/
    return "no model weights (adapter_model.* or model.* with their config)"
