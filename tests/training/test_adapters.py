"""PEFT adapters (`mtl_st.training.adapters`): the optimizer groups of an adapted model, training it through the
trainer, save / load / merge and the pipeline, and a train.py run with a `peft` block."""

from __future__ import annotations

import json
import re

import pytest
import torch

from modeling_mtl import MultiTaskModel
from mtl_st.training.param_groups import parameter_groups
from tests.utils import run_train, saved_model, tiny_model

# ----------------------------------------------------------------------------- optimizer groups
# PEFT's names of a parameter, as the plain model's: `base_model.model.` and `.base_layer`, `.original_module`,
# `.modules_to_save.<adapter>` dropped.
PEFT_PREFIX = re.compile(r"^(?:base_model\.model\.)+")
PEFT_SEGMENT = re.compile(r"\.(?:base_layer|original_module|modules_to_save\.[^.]+)(?=\.)")


def plain_name(name: str) -> str:
    return PEFT_SEGMENT.sub("", PEFT_PREFIX.sub("", name))


def test_peft_groups_equal_the_plain_models_groups():
    pytest.importorskip("peft")
    from mtl_st.training.adapters import apply_peft

    settings = dict(learning_rate=1e-4, layerwise_lr_decay=0.8, head_learning_rate=1e-3, weight_decay=0.01)

    def by_name(model) -> dict[str, tuple]:
        names = {id(p): plain_name(n) for n, p in model.named_parameters()}
        decay = {n for n, _ in model.named_parameters() if not n.endswith("bias")}
        return {names[id(p)]: (group["name"], group["lr"], group["weight_decay"])
                for group in parameter_groups(model, decay_names=decay, **settings) for p in group["params"]}

    plain = by_name(tiny_model())
    peft_model = apply_peft(tiny_model(), {"method": "lora", "r": 4, "target_modules": ["query", "value"]})
    wrapped = by_name(peft_model)
    lora = {name for name in wrapped if ".lora_" in name}
    assert lora and all(wrapped[name][0].startswith("encoder.layer.") for name in lora)
    shared = set(wrapped) - lora
    assert shared == {name for name in plain if name.startswith("heads.")}  # the base encoder is frozen
    assert {name: wrapped[name] for name in shared} == {name: plain[name] for name in shared}
    assert {lr for _, lr, _ in (wrapped[name] for name in shared)} == {1e-3}
    layer0 = next(name for name in lora if "layer.0." in name)
    assert wrapped[layer0][1] == pytest.approx(1e-4 * 0.8)  # layer-wise decay reaches the adapter


def test_peft_through_the_trainer_keeps_the_rates():
    pytest.importorskip("peft")
    from mtl_st.training.adapters import apply_peft
    from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments

    model = apply_peft(tiny_model(), {"method": "lora", "r": 4, "target_modules": ["query", "value"]})
    args = MultiTaskTrainingArguments(output_dir="unused", learning_rate=1e-4, head_learning_rate=1e-3,
                                      layerwise_lr_decay=0.5, weight_decay=0.01, report_to="none", use_cpu=True)
    trainer = MultiTaskTrainer(model=model, args=args)
    rates = {group["name"]: group["lr"] for group in trainer.create_optimizer().param_groups}
    assert rates["heads"] == 1e-3 and rates["encoder.layer.1"] == 1e-4 and rates["encoder.layer.0"] == 5e-5
    assert "other" not in rates


# ----------------------------------------------------------------------------- wrapping, saving, loading
def test_peft_cannot_wrap_the_heads_moduledict():
    """Why `mtl_st.training.adapters` names every head in `modules_to_save`: peft refuses the ModuleDict. When this
    fails (peft accepts it), `"heads"` could be passed as it is."""
    peft = pytest.importorskip("peft")
    with pytest.raises(TypeError, match="ModuleDict"):
        peft.get_peft_model(tiny_model(), peft.LoraConfig(r=4, target_modules=["query"], modules_to_save=["heads"]))


def test_peft_save_load_merge_and_pipeline(tmp_path, tokenizer):
    pytest.importorskip("peft")
    from transformers import pipeline

    from mtl_st.training.adapters import apply_peft, load_peft_model

    base_path = saved_model(tmp_path, tokenizer, name="base")  # the base: a saved MultiTaskModel
    base = MultiTaskModel.from_pretrained(base_path)
    model = apply_peft(base, {"method": "lora", "r": 4, "target_modules": ["query", "value"], "modules_to_save":
                              ["heads"]})
    with torch.no_grad():  # stand-in for training: move the adapter and one head
        for name, parameter in model.named_parameters():
            if "lora_B" in name or ".modules_to_save." in name:
                parameter.add_(0.05)
    model.eval()
    batch = tokenizer(["Paris and Rome", "hello"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).task_logits
    model.save_pretrained(tmp_path / "adapter")
    base.config.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= files
    assert "model.safetensors" not in files
    from safetensors.torch import load_file

    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in keys) and any("heads.ner" in k for k in keys)

    loaded = load_peft_model(tmp_path / "adapter").eval()
    with torch.no_grad():
        got = loaded(**batch).task_logits
    for task in expected:
        torch.testing.assert_close(got[task], expected[task], rtol=0, atol=1e-5)
    merged = loaded.merge_and_unload()
    assert type(merged) is MultiTaskModel
    with torch.no_grad():
        merged_logits = merged(**batch).task_logits
    for task in expected:
        torch.testing.assert_close(merged_logits[task], expected[task], rtol=0, atol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    pipe = pipeline("multitask", model=str(tmp_path / "merged"))
    answer = pipe("Paris and Rome")
    assert set(answer) == {"sentiment", "ner"}


def test_train_py_with_a_peft_block(tmp_path, minilm, capsys):
    pytest.importorskip("peft")

    from mtl_st.training.adapters import load_peft_model

    lora = {"method": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value"], "lora_dropout": 0.1}
    run = run_train(tmp_path, {"peft": lora, "max_train_samples": 16, "max_eval_samples": 8,
                               "max_predict_samples": 8, "push_to_hub": None, "report_to": "none"})
    files = {p.name for p in run.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert sorted(adapter["modules_to_save"]) == ["heads.ner", "heads.sentiment"]
    results = json.loads((run / "all_results.json").read_text())
    assert "test_ner_f1" in results and "test_sentiment_accuracy" in results
    model = load_peft_model(run)
    merged = model.merge_and_unload()
    assert type(merged) is MultiTaskModel and merged.encode(["hello"]).shape == (1, 384)
