"""Tests of retr.eval.metrics against values computed by hand (the arithmetic is in the comments)."""

import math

import numpy as np
import pytest

from retr.eval.metrics import (
    RetrievalScores,
    accuracy,
    average_precision,
    compute_ap,
    compute_map,
    map_at_k,
    mean_per_class_accuracy,
    oxford_ap,
    recall_at_k,
    revisited_protocols,
    VOC07_THRESHOLDS,
    voc07_ap_11point,
    voc_ap_auc,
    voc_map,
)

# ------------------------------------------------------------------------------------------------------
# Oxford compute_ap.cpp


def test_oxford_ap_junk_in_the_middle_is_removed():
    # Non-junk ranking: a(0, pos) x(1) b(2, pos) c(3); |pos| = 2.
    # a: recall 1/2, precision 1/1 -> (1/2 - 0) * (1 + 1) / 2     = 1/2
    # x: recall unchanged                                          = 0
    # b: recall 1, precision 2/3, old precision 1/2
    #    -> (1 - 1/2) * (1/2 + 2/3) / 2 = 1/2 * 7/6 / 2            = 7/24
    # AP = 12/24 + 7/24 = 19/24
    ranked = ["a", "j", "x", "b", "c"]
    assert oxford_ap(ranked, {"a", "b"}, {"j"}) == pytest.approx(19 / 24, abs=1e-15)
    # Were "j" a negative, b would sit at position 3: 1/2 * (1/3 + 2/4) / 2 = 5/24 -> AP 17/24.
    assert oxford_ap(ranked, {"a", "b"}, set()) == pytest.approx(17 / 24, abs=1e-15)


def test_oxford_ap_single_positive_at_rank_one():
    # One positive, first: 1 * (1 + 1) / 2 = 1.
    assert oxford_ap(["a", "x", "y"], {"a"}, set()) == 1.0
    # One of two positives, first, the other never ranked: 1/2 * (1 + 1) / 2 = 1/2.
    assert oxford_ap(["a", "x", "y"], {"a", "b"}, set()) == 0.5
    # One positive at rank 2: precision goes 1 -> 0/1 at x -> 1/2 at a; 1 * (0 + 1/2) / 2 = 1/4
    # (the trapezoid starts from the precision just before the hit; plain AP would give 1/2).
    assert oxford_ap(["x", "a"], {"a"}, set()) == 0.25


def test_oxford_ap_no_positive_found_and_no_positive_at_all():
    assert oxford_ap(["x", "y", "z"], {"a"}, {"y"}) == 0.0
    assert math.isnan(oxford_ap(["x", "y"], set(), set()))


def test_oxford_ap_id_both_positive_and_junk_is_junk():
    # compute_ap.cpp tests junk first: "a" is skipped, b is then first -> AP over |pos| = 2 is 1/2.
    assert oxford_ap(["a", "b"], {"a", "b"}, {"a"}) == 0.5


# ------------------------------------------------------------------------------------------------------
# revisitop compute_ap / compute_map / protocols


def test_compute_ap_revisitop_by_hand():
    # Positives at ranks 0 and 2, nres = 2, recall step 1/2:
    # j=0, r=0: precision_0 = 1, precision_1 = 1/1 -> (1 + 1) / 2 * 1/2 = 1/2
    # j=1, r=2: precision_0 = 1/2, precision_1 = 2/3 -> (1/2 + 2/3) / 2 * 1/2 = 7/24
    # AP = 19/24, the same number as the Oxford example above.
    assert compute_ap([0, 2], 2) == pytest.approx(19 / 24, abs=1e-15)
    # One positive at rank 1 of 1: (0/1 + 1/2) / 2 = 1/4.
    assert compute_ap([1], 1) == 0.25
    # Nothing retrieved: 0; no positives: NaN.
    assert compute_ap([], 3) == 0.0
    assert math.isnan(compute_ap([], 0))
    with pytest.raises(ValueError):
        compute_ap([0, 1], 1)


def test_compute_map_excludes_query_without_positives_and_clips_precision_at_k():
    # Columns are queries; rows are database indices by decreasing similarity.
    ranks = np.array(
        [
            [3, 0, 0],
            [0, 1, 1],
            [5, 2, 2],
            [1, 3, 3],
            [2, 4, 4],
            [4, 5, 5],
        ]
    )
    gnd = [
        # q0: positives 3 (rank 0) and 1 (rank 3); junk 5 at rank 2 -> positives at 0 and 2 -> AP 19/24.
        #     1-based pos = [1, 3]; P@1: kq = min(3, 1) = 1 -> 1/1 = 1
        #     P@5: kq = min(3, 5) = 3 -> 2/3 (not 2/5: revisitop clips k at the last positive); P@10 = 2/3
        {"ok": np.array([3, 1]), "junk": np.array([5])},
        # q1: no positives -> NaN, left out of every mean.
        {"ok": np.array([], dtype=int), "junk": np.array([0])},
        # q2: positive 4 at rank 4, no junk key at all -> AP (0/4 + 1/5) / 2 = 1/10.
        #     1-based pos = [5]; P@1: kq = 1 -> 0; P@5: kq = 5 -> 1/5; P@10: kq = min(5, 10) = 5 -> 1/5
        {"ok": np.array([4])},
    ]
    m, aps, pr, prs = compute_map(ranks, gnd, kappas=(1, 5, 10))
    assert aps[0] == pytest.approx(19 / 24, abs=1e-15)
    assert math.isnan(aps[1])
    assert aps[2] == pytest.approx(1 / 10, abs=1e-15)
    # mAP = (19/24 + 1/10) / 2 = (95/120 + 12/120) / 2 = 107/240
    assert m == pytest.approx(107 / 240, abs=1e-15)
    np.testing.assert_allclose(prs[0], [1, 2 / 3, 2 / 3], atol=1e-15)
    assert np.isnan(prs[1]).all()
    np.testing.assert_allclose(prs[2], [0, 1 / 5, 1 / 5], atol=1e-15)
    # mP@k = mean of q0 and q2: [1/2, (2/3 + 1/5) / 2 = 13/30, 13/30]
    np.testing.assert_allclose(pr, [1 / 2, 13 / 30, 13 / 30], atol=1e-15)


def test_compute_map_truncated_ranking_missing_positives_scores_zero():
    # Only the top 2 of the database are ranked; the positive 7 never appears.
    ranks = np.array([[0], [1]])
    m, aps, pr, prs = compute_map(ranks, [{"ok": np.array([7]), "junk": np.array([], dtype=int)}])
    assert m == 0.0 and aps[0] == 0.0
    np.testing.assert_array_equal(prs, [[0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(pr, [0.0, 0.0, 0.0])


def test_compute_map_without_ok_uses_easy_and_hard():
    ranks = np.array([[2], [0], [1]])
    # ok = easy ∪ hard = {0, 1} at ranks 1 and 2: (0/1 + 1/2)/2/2 + (1/2 + 2/3)/2/2 = 1/8 + 7/24 = 5/12
    m, _, _, _ = compute_map(ranks, [{"easy": np.array([0]), "hard": np.array([1]), "junk": np.array([5])}])
    assert m == pytest.approx(5 / 12, abs=1e-15)


def test_revisited_protocols_by_hand():
    ranks = np.array(
        [
            [5, 0],
            [0, 1],
            [1, 2],
            [2, 3],
            [3, 4],
            [4, 5],
        ]
    )
    gnd = [
        # q0, ranking 5 0 1 2 3 4:
        # easy   ok {1, 3}, junk {2, 0}: 1 at 2 - 1 junk before = 1; 3 at 4 - 2 = 2 -> pos [1, 2]
        #        AP = ((0 + 1/2)/2 + (1/2 + 2/3)/2) / 2 = (1/4 + 7/12) / 2 = 5/12
        #        1-based [2, 3]: P@1 = 0 (kq 1), P@5 = 2/3 (kq 3), P@10 = 2/3
        # medium ok {1, 3, 0}, junk {2}: 0 at 1, 1 at 2, 3 at 4 - 1 = 3 -> pos [1, 2, 3]
        #        AP = (1/4 + 7/12 + (2/3 + 3/4)/2) / 3 = (6/24 + 14/24 + 17/24) / 3 = 37/72
        #        1-based [2, 3, 4]: P@1 = 0, P@5 = 3/4 (kq 4), P@10 = 3/4
        # hard   ok {0}, junk {2, 1, 3}: 0 at 1, no junk before -> pos [1]; AP = (0 + 1/2)/2 = 1/4
        #        1-based [2]: P@1 = 0, P@5 = 1/2 (kq 2), P@10 = 1/2
        {"easy": np.array([1, 3]), "hard": np.array([0]), "junk": np.array([2])},
        # q1, ranking 0..5: easy {0} first -> AP 1, every P@k = 1 (kq = 1); no hard -> left out of hard.
        {"easy": np.array([0]), "hard": np.array([], dtype=int), "junk": np.array([], dtype=int)},
    ]
    s = revisited_protocols(ranks, gnd)
    assert set(s) == {"easy", "medium", "hard"}
    assert all(isinstance(v, RetrievalScores) for v in s.values())
    # easy: mAP (5/12 + 1)/2 = 17/24; mP@1 (0 + 1)/2; mP@5 = mP@10 = (2/3 + 1)/2 = 5/6
    assert s["easy"].map == pytest.approx(17 / 24, abs=1e-15)
    assert s["easy"].mp_at == pytest.approx({1: 1 / 2, 5: 5 / 6, 10: 5 / 6}, abs=1e-15)
    # medium: mAP (37/72 + 1)/2 = 109/144; mP@5 = mP@10 = (3/4 + 1)/2 = 7/8
    assert s["medium"].map == pytest.approx(109 / 144, abs=1e-15)
    assert s["medium"].mp_at == pytest.approx({1: 1 / 2, 5: 7 / 8, 10: 7 / 8}, abs=1e-15)
    # hard: only q0 counts.
    assert s["hard"].map == pytest.approx(1 / 4, abs=1e-15)
    assert s["hard"].mp_at == pytest.approx({1: 0.0, 5: 1 / 2, 10: 1 / 2}, abs=1e-15)
    assert math.isnan(s["hard"].aps[1])
    assert s["hard"].prs.shape == (2, 3)
    np.testing.assert_allclose(s["medium"].aps, [37 / 72, 1.0], atol=1e-15)


def test_oxford_ap_agrees_with_revisitop_on_identical_input():
    # Same trapezoid: the j-th positive at junk-free rank r adds (1/nres) * (j/r + (j+1)/(r+1)) / 2
    # in both (compute_ap.cpp starts from precision 1, which revisitop writes as "1 if r == 0").
    # They differ only when an id is both positive and junk (Oxford: junk wins), excluded here.
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_db = int(rng.integers(5, 40))
        perm = rng.permutation(n_db)
        ok = perm[: int(rng.integers(1, 6))]
        junk = perm[len(ok) : len(ok) + int(rng.integers(0, 6))]
        ranking = rng.permutation(n_db)[: int(rng.integers(1, n_db + 1))]  # possibly truncated
        ox = oxford_ap(ranking.tolist(), set(ok.tolist()), set(junk.tolist()))
        m, aps, _, _ = compute_map(ranking[:, None], [{"ok": ok, "junk": junk}])
        assert ox == pytest.approx(aps[0], abs=1e-12)
        assert m == aps[0]


# ------------------------------------------------------------------------------------------------------
# Pascal VOC


# Sorted by score: P(0.9) D(0.8) N(0.7) P(0.6) N(0.5); D is difficult (label 0), two positives.
VOC_SCORES = np.array([0.6, 0.9, 0.5, 0.8, 0.7])
VOC_LABELS = np.array([1, 1, -1, 0, -1])


def test_voc07_11point_by_hand_ignores_difficult():
    # Without D: P N P N -> recall [1/2, 1/2, 1, 1], precision [1, 1/2, 2/3, 1/2]
    # t = 0.0 .. 0.5 (6 points): max precision at recall >= t = 1
    # t = 0.6 .. 1.0 (5 points): max(2/3, 1/2) = 2/3
    # AP = (6 * 1 + 5 * 2/3) / 11 = (28/3) / 11 = 28/33
    assert voc07_ap_11point(VOC_SCORES, VOC_LABELS) == pytest.approx(28 / 33, abs=1e-15)
    # Were D a negative: P N N P N -> second positive at precision 2/4, so t >= 0.6 gives 1/2:
    # (6 + 5/2) / 11 = 17/22. Ignoring it matters.
    as_negative = np.where(VOC_LABELS == 0, -1, VOC_LABELS)
    assert voc07_ap_11point(VOC_SCORES, as_negative) == pytest.approx(17 / 22, abs=1e-15)


def test_voc_auc_by_hand_ignores_difficult():
    # recall [1/2, 1/2, 1, 1], precision [1, 1/2, 2/3, 1/2]; padded: mrec [0, .5, .5, 1, 1, 1],
    # mpre [0, 1, .5, 2/3, .5, 0] -> envelope [1, 1, 2/3, 2/3, .5, 0];
    # recall changes at 0 -> 1/2 (envelope 1) and 1/2 -> 1 (envelope 2/3): AP = 1/2 + 1/2 * 2/3 = 5/6
    assert voc_ap_auc(VOC_SCORES, VOC_LABELS) == pytest.approx(5 / 6, abs=1e-15)
    # D as a negative: second positive at precision 1/2 -> 1/2 + 1/4 = 3/4.
    as_negative = np.where(VOC_LABELS == 0, -1, VOC_LABELS)
    assert voc_ap_auc(VOC_SCORES, as_negative) == pytest.approx(3 / 4, abs=1e-15)


def test_voc_ties_follow_input_order():
    # Equal scores keep input order. N then P: recall [0, 1], precision [0, 1/2]
    #   11-point: every t has max precision 1/2 -> 1/2; auc: 1 * 1/2 = 1/2.
    # P then N: recall [1, 1], precision [1, 1/2] -> 11-point 1, auc 1.
    s = np.array([0.5, 0.5])
    assert voc07_ap_11point(s, np.array([-1, 1])) == 0.5
    assert voc_ap_auc(s, np.array([-1, 1])) == 0.5
    assert voc07_ap_11point(s, np.array([1, -1])) == 1.0
    assert voc_ap_auc(s, np.array([1, -1])) == 1.0
    # And the result is the same on every call (no randomness in the tie order).
    assert len({voc07_ap_11point(s, np.array([-1, 1])) for _ in range(5)}) == 1


def test_voc07_thresholds_are_matlabs_colon():
    # MATLAB's 0:0.1:1 (its colon operator fills the first half from 0 up, the second from 1 down, as Moler's
    # colonop.m): not i / 10 (t[3]), not np.arange (t[6], t[7]).
    assert VOC07_THRESHOLDS.tolist() == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert VOC07_THRESHOLDS[3] != 3 / 10 and VOC07_THRESHOLDS[7] != np.arange(0, 1.1, 0.1)[7]


def test_voc07_threshold_at_exact_recall_point():
    # 10 positives: 3 P, then 3 N, then 7 P (scores strictly decreasing).
    # Recall 3/10 (the double 0.3) is reached with precision 1, but the devkit's t[3] is 0.30000000000000004:
    # t = 0, .1, .2 -> 1; t = .3 .. 1 (8 points) -> max(4/7, 5/8, ..., 10/13) = 10/13
    # AP = (3 + 8 * 10/13) / 11 = (119/13) / 11 = 119/143 (with t = 3/10 exactly it would be 122/143).
    labels = np.array([1] * 3 + [-1] * 3 + [1] * 7)
    scores = -np.arange(len(labels), dtype=float)
    assert voc07_ap_11point(scores, labels) == pytest.approx(119 / 143, abs=1e-15)
    # 7 P, 3 N, 3 P: recall 7/10 = 0.7 reaches the devkit's t[7] = 1 - 0.30000000000000004 = 0.7:
    # t = 0 .. .7 (8 points) -> 1; t = .8, .9, 1 -> max(8/11, 9/12, 10/13) = 10/13
    # AP = (8 + 3 * 10/13) / 11 = 134/143 (np.arange's t[7] = 0.7000000000000001 would give 131/143).
    labels = np.array([1] * 7 + [-1] * 3 + [1] * 3)
    assert voc07_ap_11point(scores, labels) == pytest.approx(134 / 143, abs=1e-15)


def test_voc_map_skips_classes_without_positives():
    s = np.array([0.5, 0.5])
    scores = np.stack([VOC_SCORES, VOC_SCORES, np.r_[s, 0.1, 0.0, -1.0]], axis=1)
    labels = np.stack([VOC_LABELS, np.array([-1, 0, -1, -1, 0]), np.array([-1, 1, -1, -1, -1])], axis=1)
    # Class 0: 28/33 (above). Class 1: no positive -> NaN. Class 2: N(.5) P(.5) N N N
    #   -> recall [0, 1, 1, 1, 1], precision [0, 1/2, 1/3, 1/4, 1/5]: 11-point 1/2, auc 1/2.
    m, aps = voc_map(scores, labels, method="11point")
    assert math.isnan(aps[1])
    np.testing.assert_allclose(aps[[0, 2]], [28 / 33, 1 / 2], atol=1e-15)
    assert m == pytest.approx((28 / 33 + 1 / 2) / 2, abs=1e-15)
    m, aps = voc_map(scores, labels, method="auc")
    assert m == pytest.approx((5 / 6 + 1 / 2) / 2, abs=1e-15)
    with pytest.raises(ValueError):
        voc_map(scores, labels, method="trapezoid")
    with pytest.raises(ValueError):
        voc07_ap_11point(np.array([0.1, 0.2]), np.array([1, 2]))


# ------------------------------------------------------------------------------------------------------
# Accuracy and generic retrieval helpers


def test_accuracy_and_mean_per_class_accuracy():
    pred = np.array([0, 1, 2, 2])
    true = np.array([0, 1, 1, 2])
    assert accuracy(pred, true) == 0.75  # 3 of 4
    # class 0: 1/1, class 1: 1/2, class 2: 1/1 -> (1 + 1/2 + 1) / 3 = 5/6
    assert mean_per_class_accuracy(pred, true) == pytest.approx(5 / 6, abs=1e-15)
    with pytest.raises(ValueError):
        accuracy(pred, true[:3])


def test_average_precision_non_interpolated():
    # Relevant at ranks 1 and 3 of 3 relevant: (1/1 + 2/3) / 3 = 5/9.
    assert average_precision(np.array([True, False, True, False]), 3) == pytest.approx(5 / 9, abs=1e-15)
    assert math.isnan(average_precision(np.array([False]), 0))


def test_recall_and_map_at_k():
    ranked = np.array([[5, 1, 2], [3, 4, 0], [7, 8, 9]])
    positives = [{1}, {0, 9}, set()]  # the last query has none -> left out
    # k = 2: q0 has 1 in [5, 1] -> 1; q1 nothing in [3, 4] -> 0; mean 1/2
    assert recall_at_k(ranked, positives, 2) == 0.5
    # k = 3: q1 finds 0 at rank 3 -> 1; mean 1
    assert recall_at_k(ranked, positives, 3) == 1.0
    # AP@3: q0: P@2 = 1/2 over min(1, 3) = 1 -> 1/2; q1: P@3 = 1/3 over min(2, 3) = 2 -> 1/6
    # mean (1/2 + 1/6) / 2 = 1/3
    assert map_at_k(ranked, positives, 3) == pytest.approx(1 / 3, abs=1e-15)
    with pytest.raises(ValueError):
        recall_at_k(ranked, positives, 4)
