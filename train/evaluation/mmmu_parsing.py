"""MMMU's answer parsing and matching, as its official `eval/eval_utils.py` (MMMU-Benchmark/MMMU at
51ce7f3, mirrored in lmms-eval's mmmu/utils.py): `parse_multi_choice_response`, `parse_open_response`
with `extract_numbers` / `normalize_str`, `eval_multi_choice`, `eval_open`, and the subject of an id.

One departure: where no option can be read, the official code picks one with the global `random`;
here the pick is seeded by the question id, so a run is reproducible and a sample's score does not
depend on the others.
"""

from __future__ import annotations

import random
import re

DOMAINS = {
    "Art and Design": ["Art", "Art_Theory", "Design", "Music"],
    "Business": ["Accounting", "Economics", "Finance", "Manage", "Marketing"],
    "Science": ["Biology", "Chemistry", "Geography", "Math", "Physics"],
    "Health and Medicine": ["Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"],
    "Humanities and Social Science": ["History", "Literature", "Sociology", "Psychology"],
    "Tech and Engineering": ["Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"],
}


def mmmu_subject(question_id: str) -> str:
    """"validation_Art_Theory_12" -> "Art_Theory" (`extract_subset_name`)."""
    split = question_id.split("_")[0]
    m = re.search(rf"^{re.escape(split)}_(.+?)_\d+$", question_id)
    if not m:
        raise ValueError(f"MMMU id {question_id!r} is not <split>_<subject>_<number>")
    return m.group(1)


def parse_multi_choice_response(response: str, index2ans: dict[str, str], seed: str = "") -> str:
    """The option letter a response names: "(B)" first, then "B " , then "B.", then (in a response
    longer than 5 words) the options' texts; the last-mentioned wins a tie; none: a seeded random pick."""
    all_choices = list(index2ans)
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans, ans_with_brack, candidates = True, False, []
    for choice in all_choices:
        if f"({choice})" in response:
            candidates.append(choice)
            ans_with_brack = True
    if not candidates:
        candidates = [c for c in all_choices if f"{c} " in response]
    if not candidates:
        candidates = [c for c in all_choices if f"{c}." in response]
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, ans in index2ans.items() if ans.lower() in response.lower()]
        index_ans = False
    if not candidates:
        return random.Random(seed).choice(all_choices)
    if len(candidates) == 1:
        return candidates[0]
    if index_ans:
        starts = [response.rfind(f"({c})") if ans_with_brack else response.rfind(f" {c} ") for c in candidates]
    else:
        starts = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    return candidates[starts.index(max(starts))]  # np.argmax: the first of equal maxima


def extract_numbers(text: str) -> list[str]:
    """Numbers with thousands commas, in scientific notation, and plain, in that order."""
    commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return commas + scientific + simple


def check_is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(text: str) -> list:
    """A number as [float rounded to 2 places]; text lower-cased, a single character padded with a
    space on either side (two forms) so it never matches inside a word."""
    text = text.strip()
    if check_is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    subs = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys = []
    for index, resp in enumerate(subs):
        if index == len(subs) - 1:
            indicators.extend(["="])  # the last sentence may be an equation
        shortest = None
        for indicator in indicators:
            if indicator in resp:
                tail = resp.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", "'"]:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list:
    """Candidate answers of a free response: the tails after "is", "so", "=" ... of each sentence,
    and the numbers in them, normalised (`normalize_str`), without duplicates."""
    keys = _key_subresponses(response)
    preds = list(keys)
    for resp in keys:
        preds.extend(extract_numbers(resp))
    out = []
    for p in preds:
        out.extend(normalize_str(p))
    return list(dict.fromkeys(out))


def eval_open(gold: str | list[str], preds: list) -> bool:
    """A text candidate is right when a normalised gold answer occurs in it; a number when equal."""
    golds = [n for g in (gold if isinstance(gold, list) else [gold]) for n in normalize_str(g)]
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False
