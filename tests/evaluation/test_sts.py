"""Sentence similarity (`mtl_st.evaluation.sts`): reading STS pairs, their Spearman correlation, and an eval-only
similarity task on STS-B (where ../shared/data has it)."""

from __future__ import annotations

import numpy as np
import pytest

from mtl_st.data.arguments import TaskDataArguments
from mtl_st.data.splits import load_task_splits, tokenize_task
from mtl_st.evaluation.sts import SentencePair, read_sts_pairs, sts_spearman
from tests.utils import SHARED_DATA


def test_read_sts_pairs_handles_quoted_commas_and_reports_bad_rows(tmp_path):
    path = tmp_path / "sts.csv"
    path.write_text('A plan.,A canal.,4.5\nOne.,"Two, three.",0\n\n', encoding="utf-8")
    assert read_sts_pairs(path) == [SentencePair("A plan.", "A canal.", 4.5), SentencePair("One.", "Two, three.", 0.0)]
    assert read_sts_pairs(path, limit=1) == [SentencePair("A plan.", "A canal.", 4.5)]
    path.write_text("a,b,c,1.0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"expected 3 columns"):
        read_sts_pairs(path)
    path.write_text("a,b,high\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sts.csv:1"):
        read_sts_pairs(path)


def test_sts_spearman_scores_cosines_against_gold():
    from scipy.stats import spearmanr

    vectors = {"a": [1.0, 0.0], "b": [1.0, 0.1], "c": [0.0, 1.0], "d": [0.6, 0.8], "e": [-1.0, 0.0]}

    class Fake:
        def encode(self, sentences, tokenizer=None, batch_size=64, normalize=True):
            rows = np.array([vectors[s] for s in sentences])
            return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    pairs = [SentencePair("a", "b", 5.0), SentencePair("a", "d", 3.0), SentencePair("a", "c", 1.0),
             SentencePair("a", "e", 0.0)]
    assert sts_spearman(Fake(), pairs) == pytest.approx(1.0)
    reversed_gold = [SentencePair(p.sentence1, p.sentence2, -p.score) for p in pairs]
    assert sts_spearman(Fake(), reversed_gold) == pytest.approx(-1.0)
    mixed = pairs[:2] + [SentencePair("a", "c", 4.0), pairs[3]]
    cosines = [0.995, 0.6, 0.0, -1.0]
    assert sts_spearman(Fake(), mixed) == pytest.approx(spearmanr(cosines, [5.0, 3.0, 4.0, 0.0]).statistic)


@pytest.mark.skipif(not (SHARED_DATA / "stsb" / "dev.csv").exists(), reason="needs ../shared/data/stsb")
def test_eval_only_similarity_monitor_on_stsb(tmp_path, minilm, tokenizer):
    """A similarity task with no train split is only evaluated; on the base MiniLM it gives the published figure."""
    from modeling_mtl import MultiTaskModel
    from trainer_mtl import MultiTaskTrainer, MultiTaskTrainingArguments

    spec = TaskDataArguments(name="stsb", type="sentence_similarity", format="csv",
                             column_names=["sentence1", "sentence2", "score"],
                             data_files={"validation": str(SHARED_DATA / "stsb" / "dev.csv")})
    validation = load_task_splits(spec)["validation"].select(range(300))
    model = MultiTaskModel.from_encoder(str(minilm), tasks=[{"name": "stsb", "type": "sentence_similarity"}])
    args = MultiTaskTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True,
                                      per_device_eval_batch_size=64)
    trainer = MultiTaskTrainer(model=model, args=args, processing_class=tokenizer,
                               eval_dataset={"stsb": tokenize_task(validation, spec, tokenizer, {}, 256)})
    metrics = trainer.evaluate()
    a = model.encode(validation["text"], tokenizer=tokenizer)
    b = model.encode(validation["text_pair"], tokenizer=tokenizer)
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    from scipy.stats import spearmanr

    assert metrics["eval_stsb_spearman"] == pytest.approx(spearmanr(validation["label"], cosines)[0], abs=1e-4)
    assert 0.8 < metrics["eval_stsb_spearman"] < 0.95
