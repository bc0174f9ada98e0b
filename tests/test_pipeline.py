"""The `multitask` pipeline (`pipeline_mtl`): answers of every task type, batching, entity words and offsets, its
registration; and texts longer than the model's max length: overlapping windows for token tasks (as transformers'
token-classification pipeline with `stride`), the first window for the rest, no "indexing errors" warning. Tiny
random encoders (128 positions: windows of 126 tokens)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, pipeline

import pipeline_mtl  # noqa: F401  (registers "multitask")
from configuration_mtl import MultiTaskConfig
from modeling_mtl import MultiTaskModel
from pipeline_mtl import MultiTaskPipeline
from postprocess_mtl import single_label_answer, word_entities
from tests.utils import ALL_TASKS, NER_LABELS, REPO, TASKS, biased_model, run_python, saved_model, tiny_model

WORDS = ["Emma", "met", "Noah", "in", "Paris,", "then", "Zoe\u0301", "left", "for", "São", "Paulo."]
LONG = " ".join(WORDS[i % len(WORDS)] + ("" if i % 7 else str(i)) for i in range(400))  # ~600 sub-tokens
ROOM = 128 - 2  # the tiny encoders' 128 positions, less [CLS] and [SEP]


def strip_scores(entities: list[dict]) -> list[tuple]:
    return [(e["entity_group"], e["word"], e["start"], e["end"]) for e in entities]


def assert_same_answer(got: dict, expected: dict) -> None:
    assert set(got) - {"embedding"} == set(expected) - {"embedding"}
    assert strip_scores(got["ner"]) == strip_scores(expected["ner"])
    assert [e["score"] for e in got["ner"]] == pytest.approx([e["score"] for e in expected["ner"]], abs=1e-5)
    assert got["sentiment"]["label"] == expected["sentiment"]["label"]
    assert got["sentiment"]["score"] == pytest.approx(expected["sentiment"]["score"], abs=1e-5)


# ----------------------------------------------------------------------------- answers
def test_pipeline_output_shape_batching_and_embedding(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer, bias_label="B-PER")
    pipe = pipeline("multitask", model=str(path), device="cpu")
    one = pipe("Peter met Mary")
    assert set(one) == {"sentiment", "ner"}
    assert set(one["sentiment"]) == {"label", "score"} and one["sentiment"]["label"] in TASKS[0]["labels"]
    # Every word is B-PER: one entity per word, offsets slicing the text.
    assert [(e["word"], e["start"], e["end"], e["entity_group"]) for e in one["ner"]] == [
        ("Peter", 0, 5, "PER"), ("met", 6, 9, "PER"), ("Mary", 10, 14, "PER")]
    texts = ["Peter met Mary", "a much longer text about Paris and London in spring", "Hi"]
    batched = pipe(texts, batch_size=3, return_embedding=True)
    assert isinstance(batched, list) and len(batched) == 3
    assert batched[0]["ner"] == one["ner"]
    assert [e["word"] for e in batched[2]["ner"]] == ["Hi"]
    model = MultiTaskModel.from_pretrained(path)
    np.testing.assert_allclose(batched[1]["embedding"], model.encode(texts[1]), atol=1e-5)


def test_pipeline_answers_every_type(tokenizer):
    model = tiny_model(tasks=ALL_TASKS)
    pipe = MultiTaskPipeline(model=model, tokenizer=tokenizer)
    answer = pipe("Emma had pasta in Rome.")
    assert set(answer) == {"sentiment", "ner", "topics", "stars"}  # single-text tasks
    assert set(answer["sentiment"]) == {"label", "score"}
    assert isinstance(answer["ner"], list)
    assert all(entry["score"] >= 0.4 for entry in answer["topics"])
    with torch.no_grad():
        ids = tokenizer("Emma had pasta in Rome.", return_tensors="pt")
        out = model(**ids)
    probabilities = torch.sigmoid(out.task_logits["topics"][0])
    assert [entry["label"] for entry in answer["topics"]] == [
        ALL_TASKS[3]["labels"][i] for i in torch.argsort(-probabilities).tolist() if probabilities[i] >= 0.4]
    assert answer["stars"]["score"] == pytest.approx(out.task_logits["stars"][0, 0].item(), abs=1e-5)

    pair = pipe({"text": "A man plays a guitar.", "text_pair": "Someone makes music."})
    assert set(pair) == {"nli", "sts"}
    assert set(pair["nli"]) == {"label", "score"}
    first, second = model.encode(["A man plays a guitar.", "Someone makes music."], tokenizer=tokenizer)
    cosine = first @ second / np.linalg.norm(first) / np.linalg.norm(second)
    assert pair["sts"]["score"] == pytest.approx(float(cosine), abs=1e-5)
    with pytest.raises(TypeError, match="pair must be"):
        pipe({"text": "a"})


def test_pipeline_merges_entity_words(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer, bias_label="I-LOC")
    pipe = pipeline("multitask", model=str(path))
    entities = pipe("New York, U.S.")["ner"]
    # I-LOC everywhere: adjacent words continue one entity; punctuation is its own word, as the tokenizer splits.
    assert [e["word"] for e in entities] == ["New York, U.S."]
    assert entities[0]["start"] == 0 and entities[0]["end"] == len("New York, U.S.")


def test_pipeline_spans_keep_trailing_combining_marks():
    text = "Zoe\u0301 lives"  # an uncased BERT tokenizer strips the accent: "zoe" ends at 3
    logits = np.array([[0, 5, 0], [5, 0, 0]], dtype=np.float32)  # B-PER, O
    entities = word_entities(text, [(0, 3), (5, 10)], [0, 1], logits, ["O", "B-PER", "I-PER"])
    assert entities[0]["word"] == "Zoe\u0301" and entities[0]["end"] == 4


@pytest.mark.parametrize("name", ["wnut17/test.conll", "wnut17/validation.conll"])
def test_entity_offsets_on_real_sentences(name, tokenizer):
    """Gold WNUT-17 tags as the head's output: the entities found slice the text to exactly the gold words."""
    from mtl_st.data.readers import read_conll

    path = REPO / "data" / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    labels = ["O", "B-person", "I-person", "B-location", "I-location", "B-group", "I-group", "B-corporation",
              "I-corporation", "B-product", "I-product", "B-creative-work", "I-creative-work"]
    checked = 0
    for sentence in read_conll(path)[:150]:
        text = " ".join(sentence["tokens"])
        encoded = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True)
        offsets = [None if s else tuple(o) for o, s in zip(encoded["offset_mapping"], encoded["special_tokens_mask"])]
        word_ids = encoded.word_ids()
        # Map each token to its whitespace word (the gold tag) via character positions.
        starts, position = [], 0
        for token in sentence["tokens"]:
            starts.append(position)
            position += len(token) + 1
        probabilities = np.zeros((len(offsets), len(labels)))
        previous_gold = None
        for i, span in enumerate(offsets):
            if span is None:
                probabilities[i, 0] = 1
                continue
            gold_word = max(j for j, s in enumerate(starts) if s <= span[0])
            tag = sentence["tags"][gold_word]
            # A gold word that the tokenizer splits into several words: later pieces continue the entity.
            if tag.startswith("B-") and previous_gold == gold_word:
                tag = "I-" + tag[2:]
            probabilities[i, labels.index(tag)] = 1
            if word_ids[i] != (word_ids[i - 1] if i else None):
                previous_gold = gold_word
        found = [(e["entity_group"], e["word"]) for e in word_entities(text, offsets, word_ids, probabilities, labels)]
        expected, current = [], None
        for token, tag in zip(sentence["tokens"], sentence["tags"]):
            if tag.startswith("B-") or (tag.startswith("I-") and current is None):
                current = [tag[2:], [token]]
                expected.append(current)
            elif tag.startswith("I-"):
                current[1].append(token)
            else:
                current = None
        assert found == [(kind, " ".join(words)) for kind, words in expected], text
        for entity in word_entities(text, offsets, word_ids, probabilities, labels):
            assert text[entity["start"]:entity["end"]] == entity["word"]
        checked += len(expected)
    assert checked > 20


# ----------------------------------------------------------------------------- registration
def test_pipeline_by_task_name_in_a_fresh_process(tmp_path, tokenizer):
    """Where the project is installed, importing the pipeline module is all `pipeline("multitask", ...)` needs."""
    path = saved_model(tmp_path, tokenizer, bias_label="B-LOC")
    script = f"""
        import json
        from transformers import pipeline
        import pipeline_mtl
        pipe = pipeline("multitask", model={str(path)!r})
        assert type(pipe) is pipeline_mtl.MultiTaskPipeline, type(pipe)
        print(json.dumps(pipe("Paris")))
    """
    result = run_python(script, cwd=REPO, project_on_path=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["ner"][0]["word"] == "Paris"


def test_saved_config_always_declares_the_pipeline(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer)
    assert "multitask" in json.loads((path / "config.json").read_text())["custom_pipelines"]
    model = MultiTaskModel.from_pretrained(path)
    model.save_pretrained(tmp_path / "again")
    assert "multitask" in json.loads((tmp_path / "again" / "config.json").read_text())["custom_pipelines"]


def test_upstream_pipeline_checks_declared_first(tmp_path, tokenizer, monkeypatch):
    """Why the installed config wraps `custom_pipelines` in `DeclaredPipelines`: with a plain dict, transformers
    refuses the declared `multitask` pipeline without `trust_remote_code`, though the same task is registered here.
    When this fails, the wrapper can go."""
    path = str(saved_model(tmp_path, tokenizer))
    assert type(pipeline("multitask", model=path)) is pipeline_mtl.MultiTaskPipeline
    assert type(pipeline(model=path)) is pipeline_mtl.MultiTaskPipeline
    with monkeypatch.context() as patch:
        patch.setattr(MultiTaskConfig, "_prefer_registered_pipeline", lambda self: None)  # a plain dict
        with pytest.raises(ValueError, match="trust_remote_code"):
            pipeline("multitask", model=path)


# ----------------------------------------------------------------------------- long texts
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


def test_pipeline_reads_long_text_in_full_and_warns_of_truncated_tasks(tmp_path, tokenizer, caplog):
    path = saved_model(tmp_path, tokenizer, bias_label="B-PER")
    pipe = pipeline("multitask", model=str(path))
    long_text = " ".join(["word"] * 400)
    with caplog.at_level("WARNING"):
        result = pipe(long_text)
    # The tiny encoder's 128 positions: windows of 126 tokens sharing 32; every word is an entity (B-PER).
    assert len(result["ner"]) == 400 and result["ner"][-1]["end"] == len(long_text)
    assert "ner read it in full (4 windows sharing 32 tokens)" in caplog.text
    assert "sentiment read only its first 128 tokens (truncated)" in caplog.text


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


# ----------------------------------------------------------------------------- edges
def test_an_empty_list_gives_an_empty_list(tmp_path, tokenizer):
    pipe = pipeline("multitask", model=str(saved_model(tmp_path, tokenizer)))
    assert pipe([]) == []


def test_a_folder_without_tokenizer_files_says_so(tmp_path, tokenizer):
    path = saved_model(tmp_path, tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (path / name).unlink()
    with pytest.raises(AttributeError, match="No tokenizer found beside the model"):
        pipeline("multitask", model=str(path))
    assert pipeline("multitask", model=str(path), tokenizer=tokenizer)("Paris")["sentiment"]["label"]


def test_feature_extraction_pipeline_through_remote_code_with_transformers_only(tmp_path, tokenizer):
    """`model(**x)[0]` is the token states, as for any encoder: transformers' own feature-extraction pipeline works."""
    path = saved_model(tmp_path, tokenizer)
    model = MultiTaskModel.from_pretrained(path)
    batch = tokenizer(["Paris in spring"], return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).last_hidden_state[0].tolist()
    result = run_python(f"""
        import json
        from transformers import AutoModel, AutoTokenizer, pipeline
        model = AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True)
        tok = AutoTokenizer.from_pretrained({str(path)!r}, trust_remote_code=True)
        pipe = pipeline("feature-extraction", model=model, tokenizer=tok)
        print(json.dumps(pipe("Paris in spring")[0]))
    """, cwd=tmp_path, project_on_path=False)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(json.loads(result.stdout.strip().splitlines()[-1]), expected, atol=1e-5)
