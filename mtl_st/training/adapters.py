"""PEFT (LoRA or any other `peft` method) on the shared encoder, with every task head fully trained.

    from mtl_st.training.adapters import apply_peft, load_peft_model
    model = apply_peft(model, {"method": "lora", "r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]})
    ...  # MultiTaskTrainer(model=model, ...): layer-wise and head learning rates apply as without PEFT
    model.save_pretrained("run")            # the adapter + the heads (adapter_model.safetensors), and config.json
    model = load_peft_model("run")          # the base encoder from its checkpoint + the saved adapter and heads
    merged = model.merge_and_unload()       # a plain MultiTaskModel: save_pretrained, pipeline, encode

`peft` is an optional dependency (`pip install -e ".[peft]"`); this module imports it on first use.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoConfig

from configuration_mtl import MultiTaskConfig
from modeling_mtl import MultiTaskModel
from mtl_st.checkpoints import resolve_checkpoint

# Keys of a `peft:` block that are ours, not the peft config class's.
METHOD_KEY = "method"


def head_modules(model: MultiTaskModel) -> list[str]:
    """`modules_to_save` entries for every head: `heads.<task>` each.

    peft 0.21 refuses to wrap the `heads` ModuleDict itself ("modules_to_save cannot be applied to modules of type
    ModuleDict"), so every head is named on its own; `test_peft_cannot_wrap_the_heads_moduledict` fails when peft
    accepts it.
    """
    return [f"heads.{name}" for name in model.heads]  # a sentence_similarity task has no head


def peft_config(spec: dict[str, Any], model: MultiTaskModel):
    """A `peft.PeftConfig` from a YAML block such as `{method: lora, r: 8, target_modules: [query, value]}`.

    `method` is any peft type (`lora`, `ia3`, `loha`, ...; default `lora`); every other key goes to that method's
    config class. Every head is trained in full (`modules_to_save`); `"heads"` in a given `modules_to_save` list
    stands for every head.
    """
    import peft

    spec = dict(spec)
    method = str(spec.pop(METHOD_KEY, "lora")).upper().replace("-", "_")
    try:
        config_cls = peft.PEFT_TYPE_TO_CONFIG_MAPPING[peft.PeftType(method)]
    except (ValueError, KeyError):
        valid = ", ".join(sorted(t.value.lower() for t in peft.PeftType))
        raise ValueError(f"Unknown peft method {method.lower()!r}; valid methods are {valid}.") from None
    modules = list(spec.pop("modules_to_save", None) or [])
    expanded = []
    for entry in modules + head_modules(model):
        for name in head_modules(model) if entry == "heads" else [entry]:
            if name not in expanded:
                expanded.append(name)
    return config_cls(modules_to_save=expanded, **spec)


def apply_peft(model: MultiTaskModel, spec: dict[str, Any]):
    """Wrap `model` in a `peft.PeftModel` (in place: the encoder's layers get the adapter); heads stay trainable."""
    import peft

    wrapped = peft.get_peft_model(model, peft_config(spec, model))
    # peft records the base as `model.name_or_path`: for a model built by `from_encoder` that is the resolved local
    # folder of the checkpoint; the checkpoint's name (`config.base_model_name_or_path`) is portable.
    name = getattr(model.config, "base_model_name_or_path", None)
    if name and resolve_checkpoint(name) == str(model.name_or_path):
        wrapped.peft_config["default"].base_model_name_or_path = name
    return wrapped


def load_base(config: MultiTaskConfig, source: str | None = None, **kwargs: Any) -> MultiTaskModel:
    """The model the adapter was trained on: the saved MultiTaskModel `source` names, or that encoder checkpoint
    (default `config.base_model_name_or_path`) with fresh heads (the saved adapter replaces them)."""
    source = source or getattr(config, "base_model_name_or_path", None)
    if not source:
        raise ValueError("The saved config names no `base_model_name_or_path`: cannot rebuild the base model.")
    resolved = resolve_checkpoint(source)
    if AutoConfig.from_pretrained(resolved).model_type == "mtl":
        return MultiTaskModel.from_pretrained(resolved, **kwargs)
    return MultiTaskModel.from_encoder(
        source, tasks=config.tasks, pooling=config.pooling, normalize_embeddings=config.normalize_embeddings,
        classifier_dropout=config.classifier_dropout, max_seq_length=config.max_seq_length, **kwargs,
    )


def load_peft_model(path: str | os.PathLike, is_trainable: bool = False, **kwargs: Any):
    """Load a folder written by `PeftModel.save_pretrained` / `train.py` with a `peft:` block.

    The folder holds `adapter_config.json`, `adapter_model.safetensors` (adapter + heads) and the
    `MultiTaskConfig` (`config.json`); the base encoder comes from `config.base_model_name_or_path`.
    """
    import peft

    config = MultiTaskConfig.from_pretrained(path)
    adapter = peft.PeftConfig.from_pretrained(str(path))
    base = load_base(config, adapter.base_model_name_or_path, **kwargs)
    model = peft.PeftModel.from_pretrained(base, str(path), is_trainable=is_trainable)
    if os.path.exists(os.path.join(path, "tokenizer_config.json")):
        from transformers import AutoTokenizer

        base.tokenizer = AutoTokenizer.from_pretrained(path)
    return model


def save_base_config(model: Any, folder: str | os.PathLike) -> None:
    """Write a `PeftModel`'s `MultiTaskConfig` (`config.json`) beside its adapter, which `load_peft_model` rebuilds
    the base model from (peft itself saves only the adapter and the heads)."""
    if hasattr(model, "get_base_model"):
        model.get_base_model().config.save_pretrained(folder)


__all__ = ["apply_peft", "head_modules", "load_base", "load_peft_model", "peft_config", "save_base_config"]
