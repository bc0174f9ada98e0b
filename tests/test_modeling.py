"""`MultiTaskModel`: forward and heads, pooling, output flags, the embeddings table, the attention implementation,
and round trips of a real checkpoint (from_encoder, save/load, remote code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from modeling_mtl import MultiTaskModel
from tests.utils import ONE_TASK, TASKS, TINY_ENCODERS, run_python, tiny_model


# ----------------------------------------------------------------------------- forward
@pytest.mark.parametrize("family", sorted(TINY_ENCODERS))
def test_families_forward_all_heads(family, tokenizer):
    model = tiny_model(family)
    batch = tokenizer(["a short one", "a somewhat longer sentence with more words"], padding=True, return_tensors="pt")
    out = model(**batch)
    assert set(out.task_logits) == {"sentiment", "ner"}
    assert out.task_logits["sentiment"].shape == (2, 3)
    assert out.task_logits["ner"].shape == (2, batch["input_ids"].shape[1], 5)
    assert out.embeddings.shape == (2, 32)
    assert out.last_hidden_state.shape == (2, batch["input_ids"].shape[1], 32)
    assert out.logits is None and out.loss is None

    labels = torch.full(batch["input_ids"].shape, -100)
    labels[:, 1] = 1
    ner = model(**batch, task="ner", labels=labels)
    assert set(ner.task_logits) == {"ner"} and ner.logits.shape[-1] == 5
    assert torch.isfinite(ner.loss) and ner.loss.item() > 0
    ner.loss.backward()
    assert model.heads["ner"].classifier.weight.grad is not None
    assert model.heads["sentiment"].classifier.weight.grad is None


def test_task_none_runs_encoder_once(tokenizer):
    model = tiny_model()
    calls = []
    model.encoder.register_forward_hook(lambda *args: calls.append(1))
    batch = tokenizer(["one", "two words"], padding=True, return_tensors="pt")
    out = model(**batch)
    assert len(calls) == 1 and set(out.task_logits) == {"sentiment", "ner"}
    # The heads' logits equal what the single-task calls give.
    for name in ("sentiment", "ner"):
        torch.testing.assert_close(out.task_logits[name], model(**batch, task=name).logits)


def test_token_head_reads_token_states_and_sequence_head_reads_pooled(tokenizer):
    model = tiny_model()
    batch = tokenizer(["one two three"], return_tensors="pt")
    out = model(**batch)
    head = model.heads["ner"].classifier
    torch.testing.assert_close(out.task_logits["ner"], out.last_hidden_state @ head.weight.T + head.bias)
    pooled = out.last_hidden_state.mean(dim=1)
    seq = model.heads["sentiment"].classifier
    torch.testing.assert_close(out.task_logits["sentiment"], pooled @ seq.weight.T + seq.bias)


def test_loss_matches_cross_entropy_ignoring_minus_100(tokenizer):
    model = tiny_model()
    batch = tokenizer(["one two three", "four"], padding=True, return_tensors="pt")
    labels = torch.tensor([[-100, 1, 2, 0, -100], [-100, 3, -100, -100, -100]])
    out = model(**batch, task="ner", labels=labels)
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    seq = model(**batch, task="sentiment", labels=torch.tensor([2, 0]))
    torch.testing.assert_close(seq.loss, torch.nn.functional.cross_entropy(seq.logits, torch.tensor([2, 0])))


def test_all_ignored_labels_give_zero_loss_not_nan(tokenizer):
    model = tiny_model()
    batch = tokenizer(["one"], return_tensors="pt")
    out = model(**batch, task="ner", labels=torch.full(batch["input_ids"].shape, -100))
    assert out.loss.item() == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "ner", "labels": "ner_out_of_range"}, r"Labels for task 'ner' must be in \[0, 4\].*got \[5\]"),
        ({"task": "sentiment", "labels": torch.tensor([3])}, r"Labels for task 'sentiment' must be in \[0, 2\].*got \[3\]"),
        ({"task": "sentiment", "labels": torch.tensor([-1])}, r"must be in \[0, 2\].*got \[-1\]"),
        ({"task": "pos"}, r"Unknown task 'pos'; this model's tasks are \['sentiment', 'ner'\]"),
        ({"labels": torch.tensor([0])}, r"`labels` were given without `task`; name one of \['sentiment', 'ner'\]"),
    ],
)
def test_bad_forward_input_raises_clear_error(kwargs, match, tokenizer):
    model = tiny_model()
    batch = tokenizer(["one two"], return_tensors="pt")
    if isinstance(kwargs.get("labels"), str):
        labels = torch.zeros_like(batch["input_ids"])
        labels[0, 1] = 5
        kwargs = {**kwargs, "labels": labels}
    with pytest.raises(ValueError, match=match):
        model(**batch, **kwargs)


def test_labels_without_task_name_the_tasks_when_there_are_several():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"\['sentiment', 'ner'\]"):
        model(input_ids=torch.tensor([[101, 2000, 102]]), labels=torch.tensor([1]))


# ----------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("pooling", ["mean", "max", "cls"])
def test_pooling_ignores_padding(pooling, tokenizer):
    model = tiny_model(pooling=pooling)
    alone = tokenizer(["short"], return_tensors="pt")
    padded = tokenizer(["short", "a much longer sentence that forces padding on the first"], padding=True, return_tensors="pt")
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]
    with torch.no_grad():
        torch.testing.assert_close(model(**alone).embeddings[0], model(**padded).embeddings[0], atol=1e-5, rtol=1e-5)


def test_normalize_embeddings_only_changes_embeddings(tokenizer):
    raw = tiny_model(normalize_embeddings=False)
    norm = tiny_model(normalize_embeddings=True)
    batch = tokenizer(["one two"], return_tensors="pt")
    a, b = raw(**batch), norm(**batch)
    torch.testing.assert_close(b.embeddings, torch.nn.functional.normalize(a.embeddings, dim=-1))
    torch.testing.assert_close(a.task_logits["sentiment"], b.task_logits["sentiment"])


# ----------------------------------------------------------------------------- output flags
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


def test_first_output_is_a_tensor_without_a_task():
    """Field order loss, logits, last_hidden_state, ...: with no task named, `outputs[0]` is the token states (as a
    plain encoder's), with a task its logits, with labels the loss."""
    model = tiny_model()
    inputs = {"input_ids": torch.tensor([[101, 2000, 2001, 102]])}
    out = model(**inputs)
    assert list(out.keys()) == ["last_hidden_state", "embeddings", "task_logits"]
    assert isinstance(out[0], torch.Tensor)
    torch.testing.assert_close(out[0], out.last_hidden_state)
    as_tuple = model(**inputs, return_dict=False)
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)
    torch.testing.assert_close(as_tuple[1], out.embeddings)
    torch.testing.assert_close(model(**inputs, task="ner")[0], out.task_logits["ner"])


def test_output_hidden_states_as_layer_indices_reach_the_encoder():
    model = tiny_model()
    inputs = {"input_ids": torch.tensor([[101, 2000, 2001, 102]])}
    everything = model(**inputs, output_hidden_states=True).hidden_states
    chosen = model(**inputs, output_hidden_states=[0, 2]).hidden_states
    assert len(chosen) == len(everything) == 3
    assert chosen[1] is None
    torch.testing.assert_close(chosen[0], everything[0])
    torch.testing.assert_close(chosen[2], everything[2])


# ----------------------------------------------------------------------------- embeddings table
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


# ----------------------------------------------------------------------------- attn_implementation
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


# ----------------------------------------------------------------------------- real checkpoint
def assert_encoder_equals_checkpoint(encoder_state: dict, minilm) -> None:
    checkpoint = load_file(str(minilm / "model.safetensors"))
    not_weights = {"pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids"}  # unused pooler, a buffer
    assert set(encoder_state) == set(checkpoint) - not_weights
    for name, tensor in encoder_state.items():
        assert torch.equal(tensor, checkpoint[name]), name


def test_from_encoder_keeps_checkpoint_weights_bit_identical(minilm_model, minilm):
    assert_encoder_equals_checkpoint(minilm_model.encoder.state_dict(), minilm)
    assert minilm_model.config.max_seq_length == 256  # from sentence_bert_config.json
    assert minilm_model.config.base_model_name_or_path == "sentence-transformers/all-MiniLM-L6-v2"


def test_published_similarities(minilm_model):
    sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    emb = minilm_model.encode(sentences)
    sims = emb @ emb.T
    np.testing.assert_allclose([sims[0, 1], sims[0, 2], sims[1, 2]], [0.6660, 0.1046, 0.1411], atol=1e-4)


def test_save_load_and_remote_code_round_trip(minilm_model, minilm, tmp_path):
    minilm_model.save_pretrained(tmp_path / "model")
    saved = tmp_path / "model"
    assert {"configuration_mtl.py", "modeling_mtl.py", "config.json", "model.safetensors"} <= {p.name for p in saved.iterdir()}
    config_text = (saved / "config.json").read_text()
    assert '"auto_map"' in config_text and str(tmp_path) not in config_text and "/site-packages/" not in config_text

    reloaded = MultiTaskModel.from_pretrained(saved)
    assert_encoder_equals_checkpoint(reloaded.encoder.state_dict(), minilm)
    for name, tensor in minilm_model.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name

    batch = minilm_model.tokenizer(["Paris is lovely.", "I hated it."], padding=True, return_tensors="pt")
    torch.save(dict(batch), tmp_path / "batch.pt")
    with torch.no_grad():
        expected = minilm_model(**batch)

    # A fresh interpreter where this project cannot be imported loads the folder through remote code.
    script = f"""
        try:
            import modeling_mtl
            raise SystemExit("the project is importable")
        except ImportError:
            pass
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(saved)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        batch = torch.load({str(tmp_path / "batch.pt")!r})
        with torch.no_grad():
            out = model(**batch)
        torch.save({{"encoder": model.encoder.state_dict(), "logits": out.task_logits, "emb": out.embeddings}},
                   {str(tmp_path / "remote.pt")!r})
    """
    result = run_python(script, cwd=tmp_path, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "remote.pt")
    assert_encoder_equals_checkpoint(remote["encoder"], minilm)
    # The weights are equal bit for bit (above); the outputs of another process to float tolerance, since its kernels
    # may block the same sums differently (seen on an AVX-512/AMX Xeon: equal to 4 digits, not to the last bit).
    for name in ("sentiment", "ner"):
        torch.testing.assert_close(remote["logits"][name], expected.task_logits[name], rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(remote["emb"], expected.embeddings, rtol=1e-5, atol=1e-6)
