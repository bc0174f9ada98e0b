"""Task types: the torch-free specs (`tasks_mtl`), their model-side losses (`losses_mtl`, CoSENT included) and data
side, one of each on a tiny encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import losses_mtl
import tasks_mtl
from losses_mtl import cosent_loss
from tests.utils import ALL_TASKS, tiny_model


def test_task_types_have_a_model_side_and_a_data_side():
    from mtl_st.data.task_data import TASK_DATA

    assert tuple(tasks_mtl.TASK_TYPES) == ("sequence_classification", "token_classification", "pair_classification",
                                           "multi_label_classification", "regression", "sentence_similarity", "retrieval")
    assert set(tasks_mtl.TASK_TYPES) == set(losses_mtl.LOSSES) == set(TASK_DATA)


# ----------------------------------------------------------------------------- losses against hand computations
def test_cosent_loss_matches_a_hand_computation():
    cosines = torch.tensor([0.9, 0.2, 0.5])
    scores = torch.tensor([5.0, 1.0, 3.0])
    # Ordered pairs with score_i > score_j: (0,1), (0,2), (2,1); each adds exp(20 * (cos_j - cos_i)).
    terms = [20 * (0.2 - 0.9), 20 * (0.5 - 0.9), 20 * (0.2 - 0.5)]
    expected = np.log(1 + sum(np.exp(t) for t in terms))
    assert cosent_loss(cosines, scores).item() == pytest.approx(expected, rel=1e-4)
    # Wrongly ordered cosines cost more; ties in the gold scores add nothing.
    assert cosent_loss(torch.tensor([0.2, 0.9, 0.5]), scores) > cosent_loss(cosines, scores)
    assert cosent_loss(cosines, torch.tensor([2.0, 2.0, 2.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_cosent_equals_sentence_transformers_cosent():
    st_losses = pytest.importorskip("sentence_transformers.losses")
    torch.manual_seed(0)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    scores = torch.tensor([0.1, 0.9, 0.4, 0.4, 0.7, 0.0])
    cosines = torch.nn.functional.cosine_similarity(a, b)

    class Stub(torch.nn.Module):  # CoSENTLoss.compute_loss_from_embeddings needs no model
        pass

    reference = st_losses.CoSENTLoss(Stub()).compute_loss_from_embeddings([a, b], scores)
    assert cosent_loss(cosines, scores).item() == pytest.approx(reference.item(), rel=1e-5)


def test_new_types_losses_on_a_tiny_encoder():
    model = tiny_model(tasks=ALL_TASKS)
    ids = torch.tensor([[101, 2000, 2001, 102], [101, 2002, 102, 0]])
    mask = (ids != 0).long()
    out = model(ids, mask, task="topics", labels=torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, torch.tensor([[1.0, 0, 1], [0, 0, 0]]))
    assert out.logits.shape == (2, 3) and out.loss.item() == pytest.approx(expected.item(), rel=1e-6)

    out = model(ids, mask, task="stars", labels=torch.tensor([2.0, 4.5]))
    assert out.logits.shape == (2, 1)
    mse = ((out.logits[:, 0] - torch.tensor([2.0, 4.5])) ** 2).mean().item()
    assert out.loss.item() == pytest.approx(mse, rel=1e-6)

    out = model(ids, mask, task="nli", labels=torch.tensor([2, 0]))
    assert out.loss.item() == pytest.approx(torch.nn.functional.cross_entropy(out.logits, torch.tensor([2, 0])).item())

    pair = torch.tensor([[101, 2003, 102, 0], [101, 2000, 2001, 102]])
    out = model(ids, mask, task="sts", labels=torch.tensor([1.0, 3.0]), pair_input_ids=pair,
                pair_attention_mask=(pair != 0).long())
    first, second = model.embed(ids, mask), model.embed(pair, (pair != 0).long())
    assert torch.allclose(out.logits, torch.nn.functional.cosine_similarity(first, second), atol=1e-6)
    assert out.loss.item() == pytest.approx(cosent_loss(out.logits, torch.tensor([1.0, 3.0])).item(), rel=1e-6)
    assert "sts" not in model.heads  # no head: the similarity is the embeddings' cosine

    with pytest.raises(ValueError, match="multi-hot"):
        model(ids, mask, task="topics", labels=torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="'sts'.*pair_input_ids"):
        model(ids, mask, task="sts", labels=torch.tensor([1.0, 3.0]))


# ----------------------------------------------------------------------------- specs
def test_specs_say_what_each_type_reads_and_answers():
    specs = tasks_mtl.TASK_TYPES
    assert [name for name, spec in specs.items() if not spec.has_head] == ["sentence_similarity", "retrieval"]
    assert {name for name, spec in specs.items() if spec.takes_pair} == {"pair_classification", "sentence_similarity"}
    assert specs["token_classification"].reads == tasks_mtl.READS_TOKENS
    assert specs["sentence_similarity"].reads == tasks_mtl.READS_PAIR
    assert specs["retrieval"].reads == tasks_mtl.READS_RANKING and not specs["retrieval"].needs_labels
    assert tasks_mtl.head_tasks(ALL_TASKS) == ALL_TASKS[:5]
    assert tasks_mtl.text_tasks(ALL_TASKS, pair=True) == [ALL_TASKS[2], ALL_TASKS[5]]
    with pytest.raises(ValueError, match="Unknown task type 'ranking'"):
        tasks_mtl.get_task_type("ranking")
    logits = np.array([0.0, 2.0])
    answer = specs["sequence_classification"].answer(ALL_TASKS[0], logits, "text", [], [])
    assert answer["label"] == "positive" and answer["score"] == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert specs["regression"].answer(ALL_TASKS[4], np.array([1.5]), "text", [], []) == {"score": 1.5}
