"""`MultiTaskPreTrainedModel`: loading refuses what would silently give a wrong model, saving carries the bundle."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from modeling_mtl import MultiTaskModel
from tests.utils import TASKS, TINY_ENCODERS, saved_model


def test_a_plain_encoder_checkpoint_is_refused_pointing_to_from_encoder(tmp_path):
    """Once a 2-layer BERT folder loaded as a default 12-layer model with random layers and no heads."""
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(**TINY_ENCODERS["bert"])).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"holds a 'bert' checkpoint, not a MultiTaskModel .*MultiTaskModel.from_encoder"):
        MultiTaskModel.from_pretrained(tmp_path / "bert")


def test_a_head_without_weights_is_refused_unless_new_heads_are_asked_for(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer)
    weights = load_file(str(path / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("heads.ner.")}, str(path / "model.safetensors"),
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"no weights for the heads of tasks \['ner'\]"):
        MultiTaskModel.from_pretrained(path)
    model = MultiTaskModel.from_pretrained(path, allow_new_heads=True)
    assert set(model.heads) == {"sentiment", "ner"}


def test_a_task_added_to_config_json_is_refused(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer)
    config = json.loads((path / "config.json").read_text())
    config["tasks"].append({"name": "topic", "type": "sequence_classification", "labels": ["a", "b"]})
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tasks \['topic'\]"):
        AutoModel.from_pretrained(path)


def test_output_loading_info_is_still_returned_when_asked(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer)
    model, info = MultiTaskModel.from_pretrained(path, output_loading_info=True)
    assert isinstance(model, MultiTaskModel) and info["missing_keys"] == [] or not info["missing_keys"]


def test_saved_folder_carries_the_whole_bundle(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer)
    code = {p.name for p in path.glob("*.py")}
    assert code == {"configuration_mtl.py", "modeling_mtl.py", "pretrained_mtl.py", "embedding_mtl.py",
                    "tasks_mtl.py", "losses_mtl.py", "ranking_mtl.py", "encoding_mtl.py", "postprocess_mtl.py",
                    "pipeline_mtl.py"}
    copied = tmp_path / "copy"
    shutil.copytree(path, copied)
    assert MultiTaskModel.from_pretrained(copied).config.tasks == TASKS
