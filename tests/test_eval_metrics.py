"""Evaluation metrics against hand-computed values and the reference implementations' numbers."""

import math

import pytest
import torch

from train.evaluation.caption_metrics import bleu, cider_d, tokenize_caption
from train.evaluation.pope_metric import binary_metrics, parse_yes_no, pope_metrics
from train.evaluation.retrieval_metric import recall_at_k, zeroshot_accuracy
from train.evaluation.vqa_metric import normalize_vqa_answer, vqa_accuracy

# ---------------------------------------------------------------- VQA


@pytest.mark.parametrize("raw, expected", [
    ("Yes.", "yes"),                  # final period stripped
    ("two", "2"),                     # number words -> digits
    ("None", "0"),
    ("a dog", "dog"),                 # articles dropped
    ("The Red Ball", "red ball"),
    ("dont", "don't"),                # contractions restored
    ("isnt it", "isn't it"),
    ("t-shirt", "t shirt"),           # a mark not touching a space becomes a space
    ("red, white", "red white"),      # ... one touching a space is deleted
    ("1,000", "1000"),                # digit,digit commas are deleted
    ("3.5", "3.5"),                   # a period inside a number stays
    ("  yes\n", "yes"),
])
def test_vqa_normalisation_official_examples(raw, expected):
    assert normalize_vqa_answer(raw) == expected


def test_vqa_accuracy_ten_answers_leave_one_out():
    # "2" given by 2 of 10 humans: leaving out one of the two -> 1 match (1/3), otherwise 2 (2/3)
    answers = ["2"] * 2 + ["3"] * 8
    expected = (2 * (1 / 3) + 8 * (2 / 3)) / 10
    assert vqa_accuracy("two", answers) == pytest.approx(expected)
    assert vqa_accuracy("3", answers) == 1.0          # 8 matches: min(1, 7/3) or min(1, 8/3) every time
    assert vqa_accuracy("4", answers) == 0.0
    # exactly 3 matching: leaving one of them out leaves 2 -> 2/3 for those 3 subsets
    answers = ["yes"] * 3 + ["no"] * 7
    assert vqa_accuracy("Yes.", answers) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)


def test_vqa_accuracy_single_answer_is_normalised_exact_match():
    assert vqa_accuracy("Square.", ["square"]) == 1.0
    assert vqa_accuracy("a square", ["square"]) == 1.0
    assert vqa_accuracy("circle", ["square"]) == 0.0
    with pytest.raises(ValueError):
        vqa_accuracy("x", [])


# ---------------------------------------------------------------- captions


def test_cider_d_hand_computed():
    # refs: "a red circle" / "a blue square"; "a" is in both images' refs so its idf is 0, every other
    # n-gram has idf log 2. Image 1 ("a red square"): unigram and bigram cosines 1/2, no trigram
    # or 4-gram overlap -> mean over n = 0.25 -> x10 = 2.5. Image 2 (exact): 1, 1, 1 and no 4-grams
    # (norm 0 -> 0) -> 7.5. Corpus: 5.0.
    score, per_image = cider_d(["a red square", "a blue square"], [["a red circle"], ["a blue square"]])
    assert per_image == pytest.approx([2.5, 7.5])
    assert score == pytest.approx(5.0)


def test_cider_d_length_penalty_and_clipping():
    # a repeated word earns no more than the reference's weight (clipping), and a longer
    # candidate is penalised by exp(-delta^2 / 72) with delta counted in bigrams
    refs = [["red circle"], ["blue square"]]
    exact, _ = cider_d(["red circle", "blue square"], refs)
    repeated, per = cider_d(["red red red circle", "blue square"], refs)
    assert per[0] < 7.5 and exact == pytest.approx(5.0)  # unigram 1, bigram 1, no 3/4-grams -> 5.0 per image
    # by hand for "red red red circle": unigram tf-idf (3L, L) vs (L, L): clipped dot L*L + L*L = 2L^2,
    # norms sqrt(10) L and sqrt(2) L -> 2/sqrt(20); bigram "red circle" 1 of ("red red" x2, "red circle")
    # -> L^2 / (sqrt(5) L * L) = 1/sqrt(5); delta = 3 - 1 = 2 bigrams -> penalty exp(-4/72)
    expected = (2 / math.sqrt(20) + 1 / math.sqrt(5)) / 4 * math.exp(-4 / 72) * 10
    assert per[0] == pytest.approx(expected)


COCO_REFS = [
    ["a red circle at the top left", "a small red circle in the top left corner", "red circle top left"],
    ["two blue squares", "a pair of blue squares side by side"],
    ["a green triangle below a yellow circle", "green triangle and yellow circle",
     "a yellow circle above a green triangle"],
]
COCO_PREDS = ["a red circle at the top", "blue squares blue squares", "a green triangle and a circle"]


def test_cider_d_and_bleu_match_pycocoevalcap_numbers():
    # computed once with pycocoevalcap 1.2 (Cider(), Bleu(4)) on these pre-tokenised captions
    score, per_image = cider_d(COCO_PREDS, COCO_REFS)
    assert score == pytest.approx(2.941321494698691, rel=1e-9)
    assert per_image == pytest.approx([4.2627245, 1.29821048, 3.2630295], rel=1e-7)
    assert bleu(COCO_PREDS, COCO_REFS, 1) == pytest.approx(0.8749999999453126, rel=1e-9)
    assert bleu(COCO_PREDS, COCO_REFS, 4) == pytest.approx(0.6282325275029341, rel=1e-9)


def test_bleu_brevity_penalty_and_zero_precision():
    # hypothesis of 2 words against a 4-word reference: precisions 1, BP = exp(1 - 4/2)
    assert bleu(["red circle"], [["a red circle here"]], 2) == pytest.approx(math.exp(-1) * 1.0 * (1 / 1) ** 0.5 * 1)
    assert bleu(["blue"], [["red circle"]], 1) == 0.0


def test_caption_tokenizer_drops_punctuation_and_lowercases():
    assert tokenize_caption("A red circle, at the Top-Left.") == ["a", "red", "circle", "at", "the", "top", "left"]


# ---------------------------------------------------------------- POPE


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"), ("yes, there is", "yes"), ("Yes there is a red circle.", "yes"),
    ("No.", "no"), ("No, there is not.", "no"), ("There is no red circle.", "no"),
    ("There is a red circle in the image.", "yes"), ("The image does not contain it", "no"),
    ("I am not sure", None), ("circle", None), ("", None),
])
def test_pope_parser(text, expected):
    assert parse_yes_no(text) == expected


def test_pope_metrics_hand_computed():
    # gold yes x3, no x3; predictions: yes,yes,no | yes,no,<unparsed>
    pairs = [("yes", "yes"), ("yes", "yes"), ("no", "yes"), ("yes", "no"), ("no", "no"), (None, "no")]
    m = binary_metrics(pairs)
    # TP 2, FN 1, FP 1, TN 1, one unparsed (wrong, not a "yes")
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 6)
    assert m["unparsed"] == 1


def test_pope_metrics_per_split_and_overall():
    records = [{"prediction": "Yes.", "answer": "yes", "split": "random"},
               {"prediction": "no", "answer": "no", "split": "random"},
               {"prediction": "yes", "answer": "no", "split": "adversarial"},
               {"prediction": "yes", "answer": "yes", "split": "adversarial"}]
    m = pope_metrics(records)
    assert set(m) == {"all", "random", "adversarial"}
    assert m["random"]["accuracy"] == 1.0 and m["adversarial"]["accuracy"] == 0.5
    assert m["adversarial"]["precision"] == 0.5 and m["all"]["n"] == 4
    with pytest.raises(ValueError, match="not yes/no"):
        pope_metrics([{"prediction": "yes", "answer": "maybe", "id": 7}])


# ---------------------------------------------------------------- retrieval


def test_recall_at_k_hand_computed():
    # 3 images, 4 texts; texts 0,1 -> image 0, text 2 -> image 1, text 3 -> image 2
    sim = torch.tensor([[0.9, 0.1, 0.5, 0.0],
                        [0.2, 0.3, 0.1, 0.8],
                        [0.1, 0.7, 0.0, 0.6]])
    r = recall_at_k(sim, [0, 0, 1, 2], ks=(1, 2))
    # image->text: img0 best own text 0 is top-1; img1's text 2 ranks 4th; img2's text 3 ranks 2nd
    assert r["i2t_R@1"] == pytest.approx(1 / 3) and r["i2t_R@2"] == pytest.approx(2 / 3)
    # text->image: t0 -> img0 top; t1 -> img0 ranks 3rd; t2 -> img1 ranks 2nd; t3 -> img2 ranks 2nd
    assert r["t2i_R@1"] == pytest.approx(1 / 4) and r["t2i_R@2"] == pytest.approx(3 / 4)


def test_zeroshot_accuracy():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.1]])
    cls = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert zeroshot_accuracy(img, cls, [0, 1, 0]) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- Shapes captions


def test_scene_caption_parse_and_attribute_accuracy():
    from train.evaluation.scene_caption import parse_scene_caption, scene_caption_metrics

    ref = "A small red circle at the top left, a large blue square at the center and a small green triangle at the bottom right."
    assert parse_scene_caption(ref) == {"top left": ("small", "red", "circle"), "center": ("large", "blue", "square"),
                                        "bottom right": ("small", "green", "triangle")}
    # right colour/shape at top left but wrong size; wrong colour at the center; bottom right missing
    pred = "A large red circle at the top left and a large green square at the center."
    m = scene_caption_metrics([pred, ref], [ref, ref])
    assert m["exact_match"] == 0.5
    # 6 reference objects; the exact copy gets all 3 right, the other: positions 2/3, size 1, colour 1, shape 2
    assert m["position_accuracy"] == pytest.approx(5 / 6)
    assert m["size_accuracy"] == pytest.approx(4 / 6)
    assert m["color_accuracy"] == pytest.approx(4 / 6)
    assert m["shape_accuracy"] == pytest.approx(5 / 6)
    assert m["object_count_accuracy"] == 0.5
    assert scene_caption_metrics(["a dog"], ["two dogs on a sofa"]) is None
