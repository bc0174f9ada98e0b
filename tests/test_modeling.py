"""Model tests: config validation, forward/heads/losses, pooling, encode, save/load and remote code."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from configuration_mtl import MultiTaskConfig
from conftest import TASKS, TINY_ENCODERS, sst_sentences, tiny_model
from modeling_mtl import MultiTaskModel

ENC = TINY_ENCODERS["bert"]


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "tasks, pooling, match",
    [
        ([{"name": "a", "type": "ranking", "labels": ["x"]}], "mean", "Task 'a' has unknown type 'ranking'"),
        ([{"name": "a", "type": "token_classification", "labels": ["O"]}] * 2, "mean", "Duplicate task name 'a'"),
        ([{"name": "a", "type": "sequence_classification", "labels": []}], "mean", "Task 'a' has no labels"),
        ([{"name": "a", "type": "sequence_classification"}], "mean", "Task 'a' has no labels"),
        ([{"name": "a", "type": "sequence_classification", "labels": ["x"]}], "median", "Unknown pooling mode 'median'"),
    ],
)
def test_config_rejects_bad_input(tasks, pooling, match):
    with pytest.raises(ValueError, match=match):
        MultiTaskConfig(encoder=dict(ENC), tasks=tasks, pooling=pooling)


def test_config_round_trip(tmp_path):
    config = MultiTaskConfig(encoder=dict(ENC), tasks=TASKS, pooling="max", normalize_embeddings=True, max_seq_length=64)
    config.save_pretrained(tmp_path)
    loaded = MultiTaskConfig.from_pretrained(tmp_path)
    assert loaded.tasks == TASKS
    assert (loaded.pooling, loaded.normalize_embeddings, loaded.max_seq_length) == ("max", True, 64)
    assert loaded.encoder.model_type == "bert" and loaded.encoder.hidden_size == 32


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


# ----------------------------------------------------------------------------- encode
def test_encode_shapes_and_errors(tokenizer):
    model = tiny_model()
    assert model.encode("one sentence", tokenizer=tokenizer).shape == (32,)
    assert model.encode(["a", "b c"], tokenizer=tokenizer).shape == (2, 32)
    empty = model.encode([], tokenizer=tokenizer)
    assert isinstance(empty, np.ndarray) and empty.shape == (0, 32)
    as_torch = model.encode(["a"], tokenizer=tokenizer, convert_to_numpy=False)
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (1, 32)
    with pytest.raises(TypeError, match=r"item 1 is int"):
        model.encode(["fine", 3], tokenizer=tokenizer)


def test_encode_restores_input_order(tokenizer):
    model = tiny_model()
    sentences = ["x", "a much longer sentence here", "mid length one", "y z"]
    together = model.encode(sentences, tokenizer=tokenizer, batch_size=2)
    one_by_one = np.stack([model.encode(s, tokenizer=tokenizer) for s in sentences])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)


def test_encode_without_tokenizer_uses_the_saved_one(tmp_path, tokenizer):
    model = tiny_model()
    model.tokenizer = tokenizer
    model.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").exists()
    loaded = MultiTaskModel.from_pretrained(tmp_path)
    np.testing.assert_allclose(loaded.encode(["hello"]), model.encode(["hello"]), atol=1e-6)


def test_encode_without_any_tokenizer_says_so(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    loaded = MultiTaskModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="No tokenizer found beside the model"):
        loaded.encode(["hello"])


# ----------------------------------------------------------------------------- real checkpoint
@pytest.fixture(scope="module")
def minilm_model(minilm):
    return MultiTaskModel.from_encoder(
        "sentence-transformers/all-MiniLM-L6-v2", tasks=TASKS, pooling="mean", normalize_embeddings=True
    ).eval()


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


def test_encode_matches_sentence_transformers(minilm_model, minilm):
    st = pytest.importorskip("sentence_transformers")
    sentences = sst_sentences(240)
    reference = st.SentenceTransformer(str(minilm), device="cpu")
    expected = reference.encode(sentences, batch_size=32, convert_to_numpy=True)
    ours = minilm_model.encode(sentences, batch_size=32)
    assert ours.shape == expected.shape == (240, 384)
    assert np.abs(ours - expected).max() < 1e-4
    # A short sentence padded beside much longer ones embeds as it does alone (and as sentence-transformers does).
    mixed = ["Good.", sentences[0], sentences[1]]
    alone = reference.encode(["Good."], convert_to_numpy=True)[0]
    assert np.abs(minilm_model.encode(mixed, batch_size=3)[0] - alone).max() < 1e-4


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
    script = textwrap.dedent(
        f"""
        import sys
        for name in ("configuration_mtl", "modeling_mtl"):
            sys.modules[name] = None  # makes `import {{name}}` raise ImportError
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
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "remote.pt")
    assert_encoder_equals_checkpoint(remote["encoder"], minilm)
    for name in ("sentiment", "ner"):
        assert torch.equal(remote["logits"][name], expected.task_logits[name]), name
    assert torch.equal(remote["emb"], expected.embeddings)
