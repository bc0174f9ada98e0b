"""The `multitask` pipeline on texts longer than the model's max length: overlapping windows for token tasks (as
transformers' token-classification pipeline with `stride`), the first window for the rest, batching, no
"indexing errors" warning from the tokenizer. Tiny random encoders (128 positions: windows of 126 tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from conftest import TASKS, tiny_model
from pipeline_mtl import MultiTaskPipeline
from postprocess_mtl import single_label_answer, word_entities

NER_LABELS = TASKS[1]["labels"]  # O, B-PER, I-PER, B-LOC, I-LOC
WORDS = ["Emma", "met", "Noah", "in", "Paris,", "then", "Zoe\u0301", "left", "for", "São", "Paulo."]
LONG = " ".join(WORDS[i % len(WORDS)] + ("" if i % 7 else str(i)) for i in range(400))  # ~600 sub-tokens
ROOM = 128 - 2  # the tiny encoders' 128 positions, less [CLS] and [SEP]


def biased_model(bias_label: str | None = None, seed: int = 0):
    """A tiny model; with `bias_label`, its NER head says that label for every token."""
    model = tiny_model(seed=seed)
    if bias_label is not None:
        with torch.no_grad():
            model.heads["ner"].classifier.bias[NER_LABELS.index(bias_label)] = 50.0
    return model


def strip_scores(entities: list[dict]) -> list[tuple]:
    return [(e["entity_group"], e["word"], e["start"], e["end"]) for e in entities]


def assert_same_answer(got: dict, expected: dict) -> None:
    assert set(got) - {"embedding"} == set(expected) - {"embedding"}
    assert strip_scores(got["ner"]) == strip_scores(expected["ner"])
    assert [e["score"] for e in got["ner"]] == pytest.approx([e["score"] for e in expected["ner"]], abs=1e-5)
    assert got["sentiment"]["label"] == expected["sentiment"]["label"]
    assert got["sentiment"]["score"] == pytest.approx(expected["sentiment"]["score"], abs=1e-5)


def reference_ner(model, tokenizer, text: str, stride: int) -> list[dict]:
    """Written out without the pipeline's helpers: windows of ROOM tokens sharing `stride`; each token's logits from
    the window where it has the most context on its shorter side (the earlier window on a tie)."""
    full = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids = full["input_ids"]
    starts = [0]
    while starts[-1] + ROOM < len(ids):
        starts.append(starts[-1] + ROOM - stride)
    windows = [(start, min(start + ROOM, len(ids))) for start in starts]
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([[tokenizer.cls_token_id, *ids[s:e], tokenizer.sep_token_id]]))
                  .task_logits["ner"][0].numpy() for s, e in windows]
    rows = []
    for p in range(len(ids)):
        context = [min(p - s, e - 1 - p) if s <= p < e else -1 for s, e in windows]
        best = context.index(max(context))
        rows.append(logits[best][p - windows[best][0] + 1])
    return word_entities(text, [tuple(o) for o in full["offset_mapping"]], full.word_ids(), np.stack(rows),
                         NER_LABELS)


def test_long_text_gives_an_entity_per_word_over_the_whole_text(tokenizer, caplog):
    pipe = MultiTaskPipeline(model=biased_model("B-PER"), tokenizer=tokenizer)
    assert len(tokenizer(LONG, verbose=False)["input_ids"]) > 4 * ROOM
    with caplog.at_level("WARNING"):
        answer = pipe(LONG)
    # The tokenizer's words (as it splits them: "Paris," is "Paris" and ","), each B-PER, offsets into LONG.
    words = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(LONG)
    assert [(e["word"], e["start"], e["end"]) for e in answer["ner"]] == [(w, a, b) for w, (a, b) in words]
    assert all(LONG[e["start"]:e["end"]] == e["word"] and e["entity_group"] == "PER" for e in answer["ner"])
    assert answer["ner"][-1]["word"] == "in399" and answer["ner"][-1]["end"] == len(LONG)  # to the very end
    # The sequence task read the first window only, and the warning says which tasks read what.
    with torch.no_grad():
        first = pipe.model(**tokenizer(LONG, truncation=True, max_length=128, return_tensors="pt"))
    assert answer["sentiment"] == pytest.approx(
        single_label_answer(first.task_logits["sentiment"][0].numpy(), TASKS[0]["labels"]))
    assert "ner read it in full" in caplog.text and "sentiment read only its first 128 tokens" in caplog.text


@pytest.mark.parametrize("stride", [None, 0, 10, 60])
def test_windows_are_stitched_from_the_window_with_most_context(tokenizer, stride):
    model = biased_model(seed=3)  # untrained head: labels change with the context a token has
    pipe = MultiTaskPipeline(model=model, tokenizer=tokenizer)
    got = pipe(LONG, **({} if stride is None else {"stride": stride}))["ner"]
    expected = reference_ner(model, tokenizer, LONG, 32 if stride is None else stride)  # 32: the training default
    assert strip_scores(got) == strip_scores(expected)
    assert [e["score"] for e in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)


def test_stride_argument_is_honoured(tokenizer, caplog):
    model = biased_model(seed=3)
    shapes = []
    model.register_forward_pre_hook(lambda module, args, kwargs: shapes.append(kwargs["input_ids"].shape),
                                    with_kwargs=True)
    pipe = MultiTaskPipeline(model=model, tokenizer=tokenizer)
    length = len(tokenizer(LONG, add_special_tokens=False, verbose=False)["input_ids"])
    for stride in (0, 60):
        shapes.clear()
        pipe(LONG, stride=stride)
        assert len(shapes) == -(-(length - stride) // (ROOM - stride))  # windows of ROOM tokens sharing `stride`
    assert strip_scores(pipe(LONG, stride=0)["ner"]) != strip_scores(pipe(LONG, stride=60)["ner"])
    # Set once for the pipeline, overridden per call; out of range is an error.
    wide = MultiTaskPipeline(model=model, tokenizer=tokenizer, stride=60)
    assert strip_scores(wide(LONG)["ner"]) == strip_scores(pipe(LONG, stride=60)["ner"])
    with caplog.at_level("WARNING"):
        wide(LONG, stride=5)
    assert "sharing 5 tokens" in caplog.text
    for bad in (ROOM, -1, 2.5, True):
        with pytest.raises(ValueError, match="stride"):
            pipe(LONG, stride=bad)


def test_short_text_answer_is_unchanged(tokenizer):
    """One window, as before striding: the model on the tokenizer's plain encoding, entities by `word_entities`."""
    model = biased_model(seed=3)
    pipe = MultiTaskPipeline(model=model, tokenizer=tokenizer)
    text = "Emma met Noah in Paris, then Zoe\u0301 left."
    answer = pipe(text, return_embedding=True, stride=0)
    encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    offsets = [None if s else tuple(o) for o, s in zip(encoded["offset_mapping"], encoded["special_tokens_mask"])]
    with torch.no_grad():
        out = model(**tokenizer(text, return_tensors="pt"))
    expected = {"sentiment": single_label_answer(out.task_logits["sentiment"][0].numpy(), TASKS[0]["labels"]),
                "ner": word_entities(text, offsets, encoded.word_ids(), out.task_logits["ner"][0].numpy(), NER_LABELS)}
    assert_same_answer(answer, expected)
    np.testing.assert_allclose(answer["embedding"], model.encode(text, tokenizer=tokenizer), atol=1e-5)


def test_batching_long_and_short_texts_equals_one_by_one(tokenizer, caplog):
    pipe = MultiTaskPipeline(model=biased_model(seed=3), tokenizer=tokenizer)
    texts = [LONG, "Emma met Noah", LONG[:700], "Hi", LONG[100:], "Paris"]
    one_by_one = [pipe(text) for text in texts]
    for batch_size in (2, 4):
        caplog.clear()
        with caplog.at_level("WARNING"):
            batched = pipe(texts, batch_size=batch_size)
        assert len(batched) == len(texts)
        for got, expected in zip(batched, one_by_one):
            assert_same_answer(got, expected)
        assert caplog.text.count("read it in full") == 1  # one warning per call, not one per long text


def test_no_indexing_errors_warning_for_long_texts(minilm, capfd, caplog):
    """transformers' "Token indices sequence length is longer than ... indexing errors" is wrong here: the model
    never sees more than its max length. A fresh tokenizer: transformers says it once per tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    pipe = MultiTaskPipeline(model=biased_model("B-PER"), tokenizer=tokenizer)
    assert len(tokenizer(LONG, verbose=False)["input_ids"]) > tokenizer.model_max_length
    with caplog.at_level("WARNING"):
        pipe(LONG)
        pipe([LONG, "short"], batch_size=2)
    captured = capfd.readouterr()
    assert "indexing errors" not in captured.err + captured.out + caplog.text
    assert "Token indices sequence length" not in captured.err + captured.out + caplog.text


def test_pairs_still_truncate(tokenizer, caplog):
    tasks = [*TASKS, {"name": "nli", "type": "pair_classification", "labels": ["yes", "no"]}]
    pipe = MultiTaskPipeline(model=tiny_model(tasks=tasks), tokenizer=tokenizer)
    with caplog.at_level("WARNING"):
        answer = pipe({"text": LONG, "text_pair": "Emma left."})
    assert set(answer) == {"nli"} and answer["nli"]["label"] in ("yes", "no")
    assert "truncated to 128" in caplog.text
