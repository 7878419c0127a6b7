"""Text quality rules (Gopher / DataComp basic) on hand-made examples, checked by value."""

import pytest

from data.curation import text_quality as tq
from data.curation.text_quality import CaptionQuality, GopherQuality

GOOD = (
    "The museum reopened this spring after a long renovation of the east wing. Visitors can now walk "
    "through a gallery of early maps, each with a short note that explains how sailors used them. "
    "Curators say the most popular piece is a hand drawn chart of the northern coast, which shows "
    "harbours that have since silted up. A new room is devoted to instruments, with working models "
    "that children are invited to try."
)


def test_good_document_passes_every_gopher_rule():
    assert len(GOOD.split()) >= 50
    assert GopherQuality().reasons(GOOD) == []
    assert GopherQuality()(GOOD) is None


def test_word_count_and_mean_word_length():
    assert tq.word_count(["word"] * 10) == "word_count<50"
    assert tq.word_count(["w"] * 100_001) == "word_count>100000"
    assert tq.word_count(["w"] * 50) is None
    assert tq.mean_word_length(["ab"] * 60) == "mean_word_length<3"
    assert tq.mean_word_length(["abcdefghijkl"] * 60) == "mean_word_length>10"
    assert tq.mean_word_length(["abc", "abcdefghijk"]) is None  # mean 7
    assert GopherQuality()("too short to be a document") == "word_count<50"


def test_symbol_bullet_ellipsis_rules():
    words = ["word"] * 60
    assert tq.symbol_to_word_ratio("#" * 7, words) == "hash_ratio>0.1"  # 7/60 > 0.1
    assert tq.symbol_to_word_ratio("#" * 6, words) is None  # 6/60 = 0.1 is not above
    assert tq.symbol_to_word_ratio("... " * 4 + "\u2026" * 3, words) == "ellipsis_ratio>0.1"
    assert tq.bullet_lines(["- item"] * 10) == "bullet_lines>0.9"
    assert tq.bullet_lines(["- item"] * 9 + ["plain line"]) is None  # exactly 0.9
    lines = ["it went on..."] * 4 + ["a full sentence."] * 6
    assert tq.ellipsis_lines(lines) == "ellipsis_lines>0.3"
    assert tq.ellipsis_lines(lines[2:]) is None  # 2/8
    assert tq.ellipsis_lines(["x..."] * 3 + ["y."] * 7) is None  # 0.3 is not above


def test_alphabetic_and_stop_words():
    assert tq.alphabetic_words(["word"] * 45 + ["1234"] * 15) == "alphabetic_words<0.8"  # 0.75
    assert tq.alphabetic_words(["word"] * 48 + ["1234"] * 12) is None  # 0.8
    assert tq.alphabetic_words(["abc1"]) is None  # contains a letter
    assert tq.stop_words("cats sleep all day".split()) == "stop_words<2"
    assert tq.stop_words("the cat sat".split()) == "stop_words<2"  # one distinct stop word
    assert tq.stop_words("The cat sat with me.".split()) is None  # "The", "with" (case, punctuation)


def test_repetition_rules():
    assert tq._duplicate_fractions(["xx", "y", "xx", "xx"]) == (0.5, 4 / 7)
    assert tq.duplicate_lines(["a b c", "d e f", "a b c", "a b c", "g h"]) == "duplicate_lines>0.3"  # 2/5
    assert tq.duplicate_lines(["long line number one", "two", "three", "four", "two"]) is None  # 1/5, 3/28 chars
    assert tq.duplicate_paragraphs(["intro", "body text", "intro", "intro"]) == "duplicate_paragraphs>0.3"
    # top 2-gram: "click here" x10 covers 90 of 190 word characters
    words = ["click", "here"] * 10 + [f"wor{i:02d}" for i in range(20)]
    assert tq.top_ngram_fraction(words, 2, 0.2) == "top_2gram>0.2"
    assert tq.top_ngram_fraction([f"w{i:03d}" for i in range(40)], 2, 0.2) is None  # no repeated bigram
    # a 5-gram of one-letter words repeated: 10 covered chars out of 10 + 4*10
    words = list("abcde") * 2 + [f"u{i:03d}" for i in range(10)]
    assert tq.duplicate_ngram_fraction(words, 5, 0.15) == "duplicate_5gram>0.15"  # 10/50 = 0.2
    assert tq.duplicate_ngram_fraction(words, 5, 0.25) is None
    spam = " ".join(["buy cheap pills now"] * 20)
    assert GopherQuality()(spam) in {"stop_words<2", "top_2gram>0.2"}
    assert {"top_2gram>0.2", "duplicate_5gram>0.15"} <= set(GopherQuality().reasons(spam))


def test_rules_can_be_disabled_and_typos_named():
    assert GopherQuality(min_words=None, max_words=None, min_stop_words=None)("short text here") is None
    with pytest.raises(ValueError, match="min_word"):
        GopherQuality.from_config(min_word=3)


def test_datacomp_caption_rules():
    rule = CaptionQuality(min_image_side=32, max_word_repeat_fraction=0.5)
    assert rule("") == "caption_words<3"
    assert rule("image") == "caption_words<3"
    assert rule("a b c") == "caption_chars<6"  # 3 words but 5 characters
    assert rule("a red circle") is None
    assert rule("a a a a") == "caption_word_repeat>0.5"
    assert rule("a red circle", (100, 40)) is None  # ratio 2.5
    assert rule("a red circle", (130, 40)) == "aspect_ratio>3"
    assert rule("a red circle", (40, 120)) is None  # exactly 3
    assert rule("a red circle", (20, 20)) == "image_side<32"
    assert CaptionQuality()("a red circle", (150, 150)) == "image_side<200"  # DataComp's default
    assert CaptionQuality()("a a a a") is None  # the repeat rule is ours, off by default


# ---------------------------------------------------------------- C4 (Raffel et al. 2020, section 2.2)

from data.curation.c4 import C4Quality, count_sentences  # noqa: E402

PROSE = ("The river rose slowly through the night and reached the bridge by dawn.",
         "Farmers along the valley moved their animals to the higher fields.",
         "By noon the water had started to fall again, leaving mud on every road.")


def test_c4_paper_defaults():
    rule = C4Quality()
    assert (rule.min_words_per_line, rule.min_sentences, rule.max_word_length) == (5, 3, 1000)
    assert rule.bad_words is None  # the list is not shipped; nothing downloads


def test_c4_sentence_threshold_is_three():
    rule = C4Quality()
    assert rule("\n".join(PROSE)) is None  # exactly 3 sentences: kept
    assert rule("\n".join(PROSE[:2])) == "sentences<3"
    assert C4Quality(min_sentences=None)("\n".join(PROSE[:2])) is None
    # sentences are counted inside lines too: one line with three sentences is enough
    assert rule("It rained all day. The roads were closed for hours. Nobody went out that evening.") is None
    assert count_sentences('He said "we leave at six." Then he left! Why?') == 3
    assert count_sentences("Version 3.5 of the tool is out today.") == 1  # no split inside a number


def test_c4_line_word_threshold_is_five():
    rule = C4Quality()
    four, five = "Four words end here.", "Five words do end here."
    cleaned, reason = rule.clean("\n".join([*PROSE, four, five]))
    assert reason is None and cleaned.splitlines() == [*PROSE, five]
    # two prose lines + a 4-word line is 2 sentences (page dropped); + a 5-word line is 3 (kept)
    assert rule("\n".join([*PROSE[:2], four])) == "sentences<3"
    assert rule("\n".join([*PROSE[:2], five])) is None
    assert C4Quality().line_reason(four) == "line_words<5"
    assert C4Quality(min_words_per_line=4).line_reason(four) is None


def test_c4_terminal_punctuation_and_ellipsis():
    rule = C4Quality()
    assert rule.line_reason("A heading without any final mark") == "line_no_terminal_punctuation"
    assert rule.line_reason("And then the story goes on and on...") == "line_no_terminal_punctuation"
    for end in (".", "!", "?", '"'):
        assert rule.line_reason(f"This line ends with the mark {end}") is None
    assert rule.line_reason("This line ends with a single quote mark '") == "line_no_terminal_punctuation"
    menu = "Home\nAbout us\nContact\n" + "\n".join(PROSE)
    assert rule.clean(menu) == ("\n".join(PROSE), None)  # menu lines dropped, page kept


def test_c4_page_rules_javascript_policy_and_citations():
    rule = C4Quality()
    assert rule("\n".join(PROSE) + "\nfunction f() { return 1; }") == "curly_bracket"
    assert rule("\n".join(PROSE) + "\nmenu {") == "curly_bracket"  # any page with "{", as the paper says
    assert rule("Lorem Ipsum dolor sit amet.\n" + "\n".join(PROSE)) == "lorem_ipsum"
    js = "Please enable JavaScript in your browser to see this page."
    policy = "By using this site you agree to our Privacy Policy and terms."
    cleaned, reason = rule.clean("\n".join([js, *PROSE, policy]))
    assert reason is None and cleaned.splitlines() == list(PROSE)
    assert rule("\n".join([js, *PROSE[:2], policy])) == "sentences<3"  # dropped lines do not count
    cited = "The bridge was built in 1820 by the town council.[1][citation needed]"
    assert rule.clean("\n".join([cited, *PROSE[1:]]))[0].splitlines()[0] == \
        "The bridge was built in 1820 by the town council."
    assert C4Quality(drop_javascript_lines=False).line_reason(js) is None
    long_word = "A line with a very long token " + "x" * 1001 + " inside it."
    assert rule.line_reason(long_word) == "line_word_too_long"


def test_c4_bad_words_from_a_file(tmp_path):
    words = tmp_path / "en.txt"
    words.write_text("darn\nblast it\n\n")
    rule = C4Quality.from_config(bad_words_file=str(words))
    assert rule("\n".join(PROSE) + "\nOh darn, the bridge is gone again.") == "bad_word"
    assert rule("\n".join(PROSE) + "\nBlast it, the bridge is gone again.") == "bad_word"  # phrase, any case
    assert rule("\n".join(PROSE) + "\nThe darning needle was lost again.") is None  # whole words only
    with pytest.raises(ValueError, match="bad_words file"):
        C4Quality.from_config(bad_words_file=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="min_sentence"):
        C4Quality.from_config(min_sentence=3)


OTHER = (
    "Our village library has moved to the old school building next to the market square. The new "
    "reading room is larger and brighter, and it has space for a children's corner with low shelves. "
    "Volunteers have catalogued more than two thousand books over the winter, and the local history "
    "collection is now open to anyone who asks at the desk. Opening hours are longer on Saturdays."
)


def test_text_config_runs_gopher_c4_and_normalised_minhash(tmp_path):
    import json

    from data.curation.curate import curate

    copy = GOOD.replace(",", "").replace(".", " .").upper()  # same words, other punctuation and case
    docs = {"good": GOOD, "code": GOOD + "\nvar x = {a: 1};", "copy": copy, "other": OTHER, "short": "Too short."}
    src = tmp_path / "web-000000.jsonl"
    src.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()))
    report = curate("configs/curation/text.yaml", [f"web={src}"], tmp_path / "out")
    removed = {r["key"]: (r["step"], r["reason"]) for r in
               map(json.loads, (tmp_path / "out" / "removed.jsonl").read_text().splitlines())}
    assert removed == {"short": ("text_quality", "word_count<50"), "code": ("c4", "curly_bracket"),
                       "copy": ("minhash_dedup", "near_duplicate_text")}
    assert [s["name"] for s in report["steps"]] == ["text_quality", "c4", "minhash_dedup"]
    assert report["steps"][1]["params"]["min_sentences"] == 3 and report["kept"] == 2


def _reference_ngram_rules(words, n, top_t, dup_t):
    """The n-gram rules written plainly (tuples and a Counter), for parity with `NgramStats`."""
    from collections import Counter

    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    total = sum(map(len, words))
    if not grams or not total:
        return None, None
    counts = Counter(grams)
    gram, count = counts.most_common(1)[0]
    top = f"top_{n}gram>{top_t:g}" if count > 1 and count * sum(map(len, gram)) / total > top_t else None
    covered = [False] * len(words)
    for i, g in enumerate(grams):
        if counts[g] > 1:
            covered[i:i + n] = [True] * n
    dup = sum(len(w) for w, c in zip(words, covered) if c) / total > dup_t
    return top, (f"duplicate_{n}gram>{dup_t:g}" if dup else None)


def test_ngram_rules_match_a_plain_counter_implementation():
    import numpy as np

    rng = np.random.default_rng(0)
    vocab = ["a", "to", "the", "click", "here", "wonderful", "x", "buy", "now", "of"]
    checked = 0
    for doc in range(200):
        n_words = int(rng.integers(0, 60))
        words = [vocab[i] + ("s" * int(rng.integers(0, 3)) if doc % 3 else "") for i in
                 rng.integers(len(vocab) if doc % 2 else 4, size=n_words)]
        if doc % 5 == 0 and n_words > 12:  # plant a repeated run
            words[8:12] = words[:4]
        stats = tq.NgramStats(words)
        for n in range(1, 11):
            for top_t, dup_t in ((0.2, 0.15), (0.05, 0.5), (0.5, 0.05)):
                expect = _reference_ngram_rules(words, n, top_t, dup_t)
                got = (tq.top_ngram_fraction(words, n, top_t, stats), tq.duplicate_ngram_fraction(words, n, dup_t, stats))
                assert got == expect, (words, n, top_t, dup_t)
                checked += expect != (None, None)
    assert checked > 500  # the cases exercise both outcomes
