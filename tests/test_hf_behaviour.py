"""The model behaves like every other Hugging Face model: pipelines, embeddings table, attention implementation,
plain `Trainer`, PEFT, output flags, sentence-transformers, and no noise. One section per item of the issue."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import DataCollatorWithPadding, PretrainedConfig, Trainer, TrainingArguments

from configuration_mtl import MultiTaskConfig
from conftest import REPO, TASKS, TINY_ENCODERS, tiny_model
from modeling_mtl import MultiTaskModel

PROJECT_MODULES = ("configuration_mtl", "modeling_mtl", "pipeline_mtl", "modelcard_mtl", "data_mtl", "trainer_mtl",
                   "peft_mtl", "tasks_mtl")
ONE_TASK = [TASKS[0]]


def saved(tmp_path: Path, tokenizer, name: str = "model", **kwargs) -> Path:
    model = tiny_model(**kwargs)
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path / name)
    return tmp_path / name


def run_python(script: str, cwd: Path, project_on_path: bool) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter. Without the project, its modules are unimportable (they may be installed
    in this environment), the working directory is outside the repository and PYTHONPATH is empty."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    script = textwrap.dedent(script)
    if project_on_path:
        env["PYTHONPATH"] = str(REPO)
    else:
        block = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in PROJECT_MODULES)
        script = block + script
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd,
                          env=env, stdin=subprocess.DEVNULL, timeout=600)


# ----------------------------------------------------------------------------- 1. task-less pipeline
TASKLESS = """
    import json
    from transformers import AutoModel, pipeline
    path = {path!r}
    answers = []
    for step in ("first", "second", "after AutoModel"):
        if step == "after AutoModel":
            AutoModel.from_pretrained(path, trust_remote_code=True)
        pipe = pipeline(model=path, trust_remote_code=True)
        answers.append([type(pipe).__module__, pipe("Paris and Rome")["ner"][0]["word"]])
    {extra}
    print(json.dumps(answers))
"""


def test_taskless_pipeline_repeats_with_transformers_only(tmp_path, tokenizer):
    source = saved(tmp_path, tokenizer)
    clean = tmp_path / "elsewhere"
    shutil.copytree(source, clean / "model")
    result = run_python(TASKLESS.format(path=str(clean / "model"), extra=""), cwd=clean, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(answers) == 3
    for module, word in answers:
        assert module.startswith("transformers_modules") and word == "Paris"
    assert "already registered" not in result.stderr  # item 8: no "Overwriting pipeline" on the remote load


def test_taskless_pipeline_where_project_is_installed(tmp_path, tokenizer):
    """The project importable (and imported): the remote pipeline every time, and by name the installed one."""
    path = saved(tmp_path, tokenizer)
    extra = """
    import pipeline_mtl
    pipe = pipeline(model=path, trust_remote_code=True)
    answers.append([type(pipe).__module__, pipe("Paris")["ner"][0]["word"]])
    pipe = pipeline("multitask", model=path)
    assert type(pipe) is pipeline_mtl.MultiTaskPipeline, type(pipe)
    answers.append([type(pipe).__module__, pipe("Paris")["ner"][0]["word"]])
    """
    result = run_python(TASKLESS.format(path=str(path), extra=textwrap.dedent(extra).replace("\n", "\n    ")),
                        cwd=REPO, project_on_path=True)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.strip().splitlines()[-1])
    assert [word for _, word in answers] == ["Paris"] * 5
    assert "already registered" not in result.stderr


def test_saved_config_always_declares_the_pipeline(tmp_path, tokenizer):
    import pipeline_mtl  # noqa: F401  (the installed pipeline is registered)

    path = saved(tmp_path, tokenizer)
    assert "multitask" in json.loads((path / "config.json").read_text())["custom_pipelines"]
    model = MultiTaskModel.from_pretrained(path)
    model.save_pretrained(tmp_path / "again")
    assert "multitask" in json.loads((tmp_path / "again" / "config.json").read_text())["custom_pipelines"]


def test_upstream_pipeline_checks_declared_first(tmp_path, tokenizer, monkeypatch):
    """Why the installed config wraps `custom_pipelines` in `DeclaredPipelines`: with a plain dict, transformers
    refuses the declared `multitask` pipeline without `trust_remote_code`, though the same task is registered here.
    When this fails, the wrapper can go."""
    from transformers import pipeline

    import pipeline_mtl  # noqa: F401  (registers the installed pipeline)

    path = str(saved(tmp_path, tokenizer))
    assert type(pipeline("multitask", model=path)) is pipeline_mtl.MultiTaskPipeline
    assert type(pipeline(model=path)) is pipeline_mtl.MultiTaskPipeline
    with monkeypatch.context() as patch:
        patch.setattr(MultiTaskConfig, "_prefer_registered_pipeline", lambda self: None)  # a plain dict
        with pytest.raises(ValueError, match="trust_remote_code"):
            pipeline("multitask", model=path)


# ----------------------------------------------------------------------------- 2. embeddings table
def test_base_model_prefix_names_the_encoder():
    model = tiny_model()
    assert model.base_model_prefix == "encoder" and model.base_model is model.encoder
    assert model.get_input_embeddings() is model.encoder.embeddings.word_embeddings


def test_resize_token_embeddings_then_train_save_and_reload(tmp_path, tokenizer):
    tokenizer = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    tokenizer.add_tokens(["<emoji_smile>", "<emoji_cry>"])
    model = tiny_model(tasks=ONE_TASK).train()
    before = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer))
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer) == before + 2
    assert model.config.encoder.vocab_size == len(tokenizer)
    new_id = tokenizer.convert_tokens_to_ids("<emoji_smile>")
    batch = tokenizer(["so happy <emoji_smile>", "sad <emoji_cry>"], padding=True, return_tensors="pt")
    assert (batch["input_ids"] == new_id).any()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    row = model.get_input_embeddings().weight[new_id].detach().clone()
    for _ in range(2):
        loss = model(**batch, labels=torch.tensor([2, 0])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert not torch.equal(model.get_input_embeddings().weight[new_id], row)  # the new token's row trains
    model.save_pretrained(tmp_path / "resized")
    reloaded = MultiTaskModel.from_pretrained(tmp_path / "resized")
    assert reloaded.get_input_embeddings().weight.shape[0] == len(tokenizer)
    torch.testing.assert_close(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_set_input_embeddings_replaces_the_encoder_table():
    model = tiny_model()
    table = torch.nn.Embedding(100, 32)
    model.set_input_embeddings(table)
    assert model.encoder.get_input_embeddings() is table


def test_upstream_get_text_config_ignores_a_sub_config_named_encoder():
    """Why `MultiTaskConfig.get_text_config` is overridden: transformers finds text sub-configs only under other
    names. When this fails, the override can go."""

    class Plain(PretrainedConfig):
        model_type = "plain-with-encoder"

        def __init__(self, encoder=None, **kwargs):
            self.encoder = encoder
            super().__init__(**kwargs)

    plain = Plain(encoder=MultiTaskConfig(encoder=dict(TINY_ENCODERS["bert"]), tasks=TASKS).encoder)
    assert plain.get_text_config() is plain
    config = MultiTaskConfig(encoder=dict(TINY_ENCODERS["bert"]), tasks=TASKS)
    assert config.get_text_config() is config.encoder


def test_previously_saved_folder_still_loads(tmp_path, tokenizer):
    """A folder saved before `base_model_prefix` changed (keys `encoder.*`, `heads.*`) loads bit-identically."""
    from safetensors.torch import load_file

    path = saved(tmp_path, tokenizer)
    config = json.loads((path / "config.json").read_text())
    config.pop("custom_pipelines", None)
    (path / "config.json").write_text(json.dumps(config))
    stored = load_file(path / "model.safetensors")
    assert {key.split(".")[0] for key in stored} == {"encoder", "heads"}
    model = MultiTaskModel.from_pretrained(path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, stored[key], rtol=0, atol=0)


# ----------------------------------------------------------------------------- 3. attn_implementation
def test_attn_implementation_survives_from_encoder(minilm, tokenizer):
    eager = MultiTaskModel.from_encoder("sentence-transformers/all-MiniLM-L6-v2", tasks=TASKS,
                                        attn_implementation="eager").eval()
    sdpa = MultiTaskModel.from_encoder("sentence-transformers/all-MiniLM-L6-v2", tasks=TASKS,
                                       attn_implementation="sdpa").eval()
    assert eager.encoder.config._attn_implementation == "eager"
    assert sdpa.encoder.config._attn_implementation == "sdpa"
    batch = tokenizer(["A short one.", "A somewhat longer sentence with some padding."], padding=True,
                      return_tensors="pt")
    with torch.no_grad():
        out_eager = eager(**batch, output_attentions=True)
        out_sdpa = sdpa(**batch)
    # Two attention kernels, same function: fp32 rounding differs by CPU (1.6e-5 seen on an AVX-512 EPYC), so 1e-4.
    torch.testing.assert_close(out_eager.last_hidden_state, out_sdpa.last_hidden_state, rtol=0, atol=1e-4)
    torch.testing.assert_close(out_eager.embeddings, out_sdpa.embeddings, rtol=0, atol=1e-4)
    assert out_eager.attentions is not None and len(out_eager.attentions) == 6
    assert out_eager.attentions[0].shape == (2, 12, batch["input_ids"].shape[1], batch["input_ids"].shape[1])


# ----------------------------------------------------------------------------- 4. plain Trainer
def plain_trainer_rows(tokenizer, n: int = 8) -> list[dict]:
    texts = ["good film", "bad film", "it was fine I guess", "terrible", "great fun", "meh", "loved it", "awful"]
    return [{**tokenizer(texts[i % len(texts)], truncation=True), "label": i % 3} for i in range(n)]


def test_plain_trainer_trains_a_one_task_model(tmp_path, tokenizer):
    model = tiny_model(tasks=ONE_TASK).train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                             report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
                             learning_rate=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=plain_trainer_rows(tokenizer),
                      data_collator=DataCollatorWithPadding(tokenizer))
    result = trainer.train()
    assert result.global_step == 2 and np.isfinite(result.training_loss)
    assert not torch.equal(before["heads.sentiment.classifier.weight"], model.heads["sentiment"].classifier.weight)
    prediction = trainer.predict(plain_trainer_rows(tokenizer, 4))
    assert prediction.predictions.shape == (4, 3)


def test_labels_without_task_name_the_tasks_when_there_are_several():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\['sentiment', 'ner'\]"):
        model(input_ids=torch.tensor([[101, 2000, 102]]), labels=torch.tensor([1]))


# ----------------------------------------------------------------------------- 5. PEFT
def test_peft_groups_equal_the_plain_models_groups():
    pytest.importorskip("peft")
    from peft_mtl import apply_peft
    from trainer_mtl import _strip_wrappers, parameter_groups

    settings = dict(learning_rate=1e-4, layerwise_lr_decay=0.8, head_learning_rate=1e-3, weight_decay=0.01)

    def by_name(model) -> dict[str, tuple]:
        names = {id(p): _strip_wrappers(n) for n, p in model.named_parameters()}
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
    from data_mtl import MultiTaskDataset  # noqa: F401
    from peft_mtl import apply_peft
    from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments

    model = apply_peft(tiny_model(), {"method": "lora", "r": 4, "target_modules": ["query", "value"]})
    args = MultiTaskTrainingArguments(output_dir="unused", learning_rate=1e-4, head_learning_rate=1e-3,
                                      layerwise_lr_decay=0.5, weight_decay=0.01, report_to="none", use_cpu=True)
    trainer = MultiTaskTrainer(model=model, args=args)
    rates = {group["name"]: group["lr"] for group in trainer.create_optimizer().param_groups}
    assert rates["heads"] == 1e-3 and rates["encoder.layer.1"] == 1e-4 and rates["encoder.layer.0"] == 5e-5
    assert "other" not in rates


def test_peft_cannot_wrap_the_heads_moduledict():
    """Why `peft_mtl` names every head in `modules_to_save`: peft refuses the ModuleDict. When this fails (peft
    accepts it), `"heads"` could be passed as it is."""
    peft = pytest.importorskip("peft")
    with pytest.raises(TypeError, match="ModuleDict"):
        peft.get_peft_model(tiny_model(), peft.LoraConfig(r=4, target_modules=["query"], modules_to_save=["heads"]))


def test_peft_save_load_merge_and_pipeline(tmp_path, tokenizer):
    pytest.importorskip("peft")
    from transformers import pipeline

    from peft_mtl import apply_peft, load_peft_model

    base_path = saved(tmp_path, tokenizer, name="base")  # the base: a saved MultiTaskModel
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
    from test_ecosystem import run_train

    from peft_mtl import load_peft_model

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


# ----------------------------------------------------------------------------- 6. output flags
def test_config_output_flags_and_tuple_outputs():
    model = tiny_model()
    model.config._attn_implementation = "eager"  # sdpa refuses output_attentions
    inputs = {"input_ids": torch.tensor([[101, 2000, 2001, 102]])}
    assert model(**inputs).hidden_states is None
    model.config.output_hidden_states = True
    model.config.output_attentions = True
    out = model(**inputs)
    assert len(out.hidden_states) == 3 and out.attentions is not None and len(out.attentions) == 2
    model.config.output_hidden_states = model.config.output_attentions = False
    assert model(**inputs, output_hidden_states=True).hidden_states is not None  # the argument wins

    as_tuple = model(**inputs, task="sentiment", labels=torch.tensor([1]), return_dict=False)
    as_dict = model(**inputs, task="sentiment", labels=torch.tensor([1]))
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    model.config.return_dict = False
    assert isinstance(model(**inputs), tuple)


# ----------------------------------------------------------------------------- 7. sentence-transformers
def test_sentence_transformers_loads_the_raw_folder(tmp_path, tokenizer):
    st = pytest.importorskip("sentence_transformers")
    path = saved(tmp_path, tokenizer, normalize_embeddings=True, max_seq_length=64)
    model = MultiTaskModel.from_pretrained(path)
    loaded = st.SentenceTransformer(str(path), trust_remote_code=True, device="cpu")
    assert loaded.max_seq_length == 64
    sentences = ["short", "a much longer sentence " * 40]
    embeddings = loaded.encode(sentences)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings, model.encode(sentences), atol=1e-5)


def test_sentence_transformers_evaluator_runs_on_the_model(tokenizer):
    pytest.importorskip("sentence_transformers")
    from sentence_transformers.evaluation import EmbeddingSimilarityEvaluator

    model = tiny_model()
    model.tokenizer = tokenizer
    evaluator = EmbeddingSimilarityEvaluator(["a cat", "a dog", "rain"], ["a kitten", "a car", "sunshine"],
                                             [0.9, 0.2, 0.4], name="tiny")
    metrics = evaluator(model)
    assert "tiny_spearman_cosine" in metrics
    assert model.model_card_data.metrics[-1]["evaluator"] == "EmbeddingSimilarityEvaluator"


def test_encode_accepts_sentence_transformers_keywords(tokenizer):
    pytest.importorskip("sentence_transformers")
    model = tiny_model()
    model.tokenizer = tokenizer
    sentences = ["a cat sat", "on the mat"]
    plain = model.encode(sentences)
    tensor = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(tensor, torch.Tensor)
    np.testing.assert_allclose(tensor.numpy(), plain / np.linalg.norm(plain, axis=1, keepdims=True), atol=1e-6)
    truncated = model.encode(sentences, truncate_dim=8, normalize_embeddings=True)
    assert truncated.shape == (2, 8) and np.allclose(np.linalg.norm(truncated, axis=1), 1.0, atol=1e-6)
    assert model.encode(sentences, precision="ubinary").dtype == np.uint8
    prompted = model.encode(sentences, prompt="query: ")
    np.testing.assert_allclose(prompted, model.encode(["query: " + s for s in sentences]))
    np.testing.assert_allclose(model.encode(sentences, pool=None, chunk_size=4), plain)  # ignored keywords
    with pytest.raises(ValueError, match="output_value"):
        model.encode(sentences, output_value="token_embeddings")
    with pytest.raises(ValueError, match="named prompts"):
        model.encode(sentences, prompt_name="query")


# ----------------------------------------------------------------------------- 8. noise
def test_trainer_does_not_realign_special_tokens(tmp_path, tokenizer, caplog):
    model = tiny_model(tasks=ONE_TASK)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=1, report_to="none", use_cpu=True,
                             save_strategy="no", disable_tqdm=True)
    with caplog.at_level("WARNING"):
        trainer = Trainer(model=model, args=args, train_dataset=plain_trainer_rows(tokenizer, 4),
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer)
        trainer.train()
    assert "new PAD/BOS/EOS" not in caplog.text


def test_model_loads_its_tokenizer_without_the_remote_code_prompt(tmp_path, tokenizer):
    """Where the project is absent, `encode` with the saved tokenizer must not ask "run the custom code?"."""
    path = saved(tmp_path, tokenizer)
    script = f"""
        import builtins
        def refuse(prompt=""):
            raise AssertionError("prompted: " + prompt[:80])
        builtins.input = refuse
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True)
        print(model.encode(["hello world"]).shape)
    """
    result = run_python(script, cwd=tmp_path, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(1, 32)" in result.stdout


def test_upstream_autotokenizer_reads_config_json_first(tmp_path, tokenizer):
    """Why the README tells users to pass `trust_remote_code` to `AutoTokenizer` where the project is absent:
    transformers 5 loads config.json (and asks about its remote code) before it reads tokenizer_config.json's
    `tokenizer_class`. When this fails, the prompt is gone upstream and the README note can go."""
    path = saved(tmp_path, tokenizer)
    script = f"""
        import builtins
        asked = []
        builtins.input = lambda prompt="": asked.append(prompt) or "n"
        from transformers import AutoTokenizer
        AutoTokenizer.from_pretrained({str(path)!r}, trust_remote_code=False)
        assert not asked, asked
        tok = AutoTokenizer.from_pretrained({str(path)!r})
        print(len(asked), type(tok).__name__)
    """
    result = run_python(script, cwd=tmp_path, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-2:] == ["1", "BertTokenizer"]
