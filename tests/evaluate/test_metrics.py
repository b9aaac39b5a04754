from __future__ import annotations

import numpy as np
import pytest

from toolchain.core.errors import EvaluationError
from toolchain.evaluate.data import check_labels
from toolchain.evaluate.metrics import Metric, compute, metric_for


def _pairwise_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_auc_matches_the_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(11)
    scores = rng.integers(0, 6, 300).astype(np.float32)  # many ties
    labels = rng.integers(0, 2, 300)
    got = compute(Metric.parse("auc"), scores[:, None], labels)
    assert got == pytest.approx(_pairwise_auc(scores.astype(np.float64), labels.astype(bool)), abs=1e-12)
    assert compute(Metric.parse("auc"), labels.astype(np.float32), labels) == 1.0
    assert compute(Metric.parse("auc"), -labels.astype(np.float32), labels) == 0.0


def test_top_k_counts_the_true_class_among_the_k_highest() -> None:
    rng = np.random.default_rng(12)
    scores = rng.standard_normal((200, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 200)
    for k in (1, 3):
        top = np.argsort(-scores, axis=1)[:, :k]
        expected = float(np.mean([labels[i] in top[i] for i in range(200)]))
        assert compute(Metric.parse("accuracy" if k == 1 else f"top{k}"), scores, labels) == pytest.approx(expected)
    scores[0] = np.nan
    labels[0] = np.argmax(np.nan_to_num(scores[0]))
    assert compute(Metric("top", 7), scores, labels) == pytest.approx(199 / 200)  # a NaN row is never right


def test_ndcg_per_query_group() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3, 0.7])
    relevance = np.array([0, 2, 1, 1, 0, 0, 0])
    groups = np.array([1, 1, 1, 2, 2, 2, 3])  # query 3 has nothing relevant: skipped
    got = compute(Metric.parse("ndcg@2"), scores, relevance, groups)
    q1 = (0 + (2**1 - 1) / np.log2(3)) / ((2**2 - 1) + (2**1 - 1) / np.log2(3))
    q2 = 0.0  # its one relevant item is ranked third, past the cut-off
    assert got == pytest.approx((q1 + q2) / 2)
    assert compute(Metric.parse("ndcg@3"), relevance.astype(float), relevance, groups) == pytest.approx(1.0)
    with pytest.raises(EvaluationError, match="query groups; pass --groups"):
        compute(Metric.parse("ndcg@2"), scores, relevance)


def test_cosine_is_the_mean_row_similarity_with_the_reference() -> None:
    rng = np.random.default_rng(13)
    reference = rng.standard_normal((50, 16))
    assert compute(Metric.parse("cosine"), 3.0 * reference, reference) == pytest.approx(1.0)
    assert compute(Metric.parse("cosine"), -reference, reference) == pytest.approx(-1.0)
    other = rng.standard_normal((50, 16))
    expected = np.mean(np.sum(other * reference, 1) / np.linalg.norm(other, axis=1) / np.linalg.norm(reference, axis=1))
    assert compute(Metric.parse("cosine"), other, reference) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["f1", "top0", "ndcg", "ndcg@x", "auc2", "", "top99999"])
def test_unknown_metrics_are_refused(text: str) -> None:
    with pytest.raises(EvaluationError, match="is not one of accuracy, topK"):
        Metric.parse(text)


def test_the_metric_comes_from_the_override_the_declared_tag_or_the_task_tags() -> None:
    assert metric_for(("classifier", "metric:top5:logits"))[0] == Metric("top", 5, "logits")
    assert metric_for(("classifier",), override="auc")[0] == Metric("auc")
    assert metric_for(("vision", "embedding"))[0] == Metric("cosine")
    assert metric_for(("feed", "ranking"))[0].name == "auc"
    with pytest.raises(EvaluationError, match="declares no evaluation metric"):
        metric_for(("generation",))
    with pytest.raises(EvaluationError, match="'top' is not one of"):
        metric_for(("metric:top",))


@pytest.mark.parametrize(
    ("metric", "scores", "labels", "match"),
    [
        ("accuracy", np.zeros((4, 3)), np.zeros(5, np.int64), "5\\] labels for 4 examples"),
        ("accuracy", np.zeros((4, 3)), np.zeros(4, np.float32), "needs integer class ids"),
        ("accuracy", np.zeros((4, 3)), np.array([0, 1, 3, 2]), "must lie in \\[0, 3\\), found 3"),
        ("top5", np.zeros((4, 3)), np.zeros(4, np.int64), "needs at least 5 classes"),
        ("auc", np.zeros((4, 1)), np.array([0, 1, 2, 1]), "AUC needs labels 0 or 1"),
        ("auc", np.zeros((4, 1)), np.array([0, 1, np.nan, 1]), "non-finite"),
        ("auc", np.zeros((4, 3)), np.array([0, 1, 1, 1]), "one score and one label per example"),
        ("ndcg@3", np.zeros(4), np.array([0, -1, 1, 1]), "relevance labels >= 0"),
        ("cosine", np.zeros((4, 8)), np.zeros((4, 7), np.float32), "reference embeddings of shape \\[4, 8\\]"),
    ],
)
def test_labels_that_do_not_fit_the_metric_are_named(metric, scores, labels, match) -> None:
    with pytest.raises(EvaluationError, match=match):
        check_labels(Metric.parse(metric), scores, labels, None, where="labels.npy")


def test_agrees_with_scikit_learn_where_it_is_installed() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(14)
    scores = np.round(rng.standard_normal(500), 1)
    labels = rng.integers(0, 2, 500)
    assert compute(Metric.parse("auc"), scores, labels) == pytest.approx(metrics.roc_auc_score(labels, scores))
    logits = rng.standard_normal((300, 6))
    classes = rng.integers(0, 6, 300)
    got = compute(Metric.parse("top3"), logits, classes)
    assert got == pytest.approx(metrics.top_k_accuracy_score(classes, logits, k=3, labels=np.arange(6)))
    relevance = rng.integers(0, 4, (1, 40))
    ranked = rng.standard_normal((1, 40))
    assert compute(Metric.parse("ndcg@10"), ranked[0], relevance[0], np.zeros(40, np.int64)) == pytest.approx(
        metrics.ndcg_score(2**relevance - 1, ranked, k=10)  # sklearn's gain is linear; ours is 2^rel - 1
    )


def test_every_zoo_model_declares_a_metric_on_one_of_its_outputs() -> None:
    import zoo  # registers the zoo's models
    from toolchain.core.spec import SPECS

    zoo_specs = [SPECS.get(n) for n in SPECS.names() if n.split(".")[0] in zoo.__all__]
    assert len(zoo_specs) >= 10
    for spec in zoo_specs:
        if spec.name == "translation.greedy_decoder":  # token ids: no score to rank or compare
            continue
        declared = [t for t in spec.tags if t.startswith("metric:")]
        assert len(declared) == 1, spec.name
        metric, source = metric_for(spec.tags)
        assert source.startswith("declared by the spec") and (metric.output or spec.outputs[0]) in spec.outputs
