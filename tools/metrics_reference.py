"""Writes the caption-metric fixtures for `glimpse-train` (`metrics::caption`).

The reference is the COCO caption evaluation toolkit as packaged on PyPI
(pycocoevalcap 1.2): its `Bleu(4)` scorer (corpus BLEU-1..4, "closest" reference
length) and its `Cider()` scorer (CIDEr-D: sigma 6, clipped tf-idf, x10). Its
PTBTokenizer needs Java, so texts are tokenised here with the simplified rule the Rust
side documents -- lowercase, delete every character of `string.punctuation` (the same
set as Rust's `char::is_ascii_punctuation`), split on whitespace -- and the scorers get
the space-joined tokens. The fixture keeps both the raw texts (what the Rust test feeds
to its own tokenizer) and the tokens (what it checks that tokenizer against).

Corpora:
- `edge_cases`: exact match, empty and punctuation-only candidates, a candidate
  longer than its references with repeated words, a one-word candidate (CIDEr counts
  length in bigrams), a tie in the "closest" reference length, an empty reference, an
  image with a single reference, a candidate sharing nothing with its references.
- `random`: 40 images over a small vocabulary, candidates made by editing a reference,
  drawn with a fixed seed (stored as text, so no RNG has to be reproduced).
- `no_4gram_match`: no candidate shares a 4-gram with its references, which exercises
  the scorer's 1e-15/1e-9 smoothing of zero precisions.
- `single_image`: one image, where every idf is log(1) = 0 and CIDEr is 0.
- `all_empty`: every candidate empty.

Run from the repository root (needs `pip install pycocoevalcap==1.2` in the venv):

    tools/.venv/bin/python tools/metrics_reference.py

Output: tools/fixtures/metrics/captions.json.
"""

import json
import random
import string
from importlib.metadata import version
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

OUT = Path(__file__).resolve().parent / "fixtures" / "metrics"
PUNCT = set(string.punctuation)


def tokenize(text: str) -> list:
    return "".join(c for c in text.lower() if c not in PUNCT).split()


EDGE_CASES = [
    # Candidate equal to a reference.
    ("a red circle in the top left",
     ["a red circle in the top left", "a small red circle", "there is a red circle"]),
    # Empty candidate.
    ("",
     ["a blue square on a white background", "one blue square", "a large blue square"]),
    # Longer than every reference, repeated words (clipping).
    ("a red red red circle circle on a blue blue background background with a red circle",
     ["a red circle on a blue background", "a red circle", "an image of a red circle"]),
    # One word: no bigrams, so CIDEr's length is 0.
    ("circle",
     ["a green circle", "there is a green circle in the center", "one green circle"]),
    # Only punctuation: tokenises to nothing.
    ("!!! ... ?",
     ["a yellow star", "a small yellow star in the bottom right"]),
    # An empty reference next to a real one.
    ("a blue star",
     ["", "a blue star on a checkered red background"]),
    # Upper case and punctuation in the candidate and the references.
    ("A Red circle, in the TOP-left!",
     ["A red circle in the top left.", "There is a RED circle!", "a small red circle..."]),
    # Nothing in common with the references.
    ("stock photo 42",
     ["two purple hearts", "a group of two purple hearts", "there are two purple hearts"]),
    # Candidate of 5 words, references of 4 and 6: the tie goes to the shorter one.
    ("an orange cross on white",
     ["an orange cross here", "an orange cross on a white", "orange cross"]),
    # Every word the same.
    ("the the the the the the",
     ["the cyan diamond is on the left", "a cyan diamond"]),
    # A single reference.
    ("a pink heart in the middle right",
     ["a pink heart in the middle right"]),
    # Two words.
    ("black cross",
     ["a black cross on a speckled pink background", "one black cross", "a black cross"]),
]

NO_4GRAM = [
    ("red circle blue square",
     ["a red circle and a blue square", "a blue square and a red circle"]),
    ("small star green",
     ["a small green star", "one green star"]),
    ("heart pink the in center",
     ["a pink heart in the center", "a heart"]),
    ("white white white",
     ["a white cross", "white"]),
]

SINGLE_IMAGE = [
    ("a red circle on a blue background",
     ["a red circle on a blue background", "a small red circle", "one red circle"]),
]

ALL_EMPTY = [
    ("", ["a red circle", "one red circle"]),
    ("", ["two blue squares", "a group of two blue squares"]),
    ("", ["a green star"]),
]

VOCAB = ("a an the one two three red green blue yellow purple circle square star "
         "heart cross on in of small large background top left center bottom right "
         "there is are").split()


def random_corpus(seed: int, n_images: int) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(n_images):
        refs = []
        for _ in range(rng.randint(1, 5)):
            refs.append(" ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 12))))
        words = rng.choice(refs).split()
        edit = rng.random()
        if edit < 0.3:  # substitute some words
            words = [rng.choice(VOCAB) if rng.random() < 0.3 else w for w in words]
        elif edit < 0.5:  # drop words
            words = [w for w in words if rng.random() < 0.7]
        elif edit < 0.7:  # add words
            words = words + [rng.choice(VOCAB) for _ in range(rng.randint(1, 6))]
        elif edit < 0.8:  # shuffle
            rng.shuffle(words)
        elif edit < 0.85:  # empty
            words = []
        # else: keep a reference as is
        out.append((" ".join(words), refs))
    return out


def score(name: str, corpus: list) -> dict:
    cand_tok = [tokenize(c) for c, _ in corpus]
    refs_tok = [[tokenize(r) for r in refs] for _, refs in corpus]
    res = {i: [" ".join(t)] for i, t in enumerate(cand_tok)}
    gts = {i: [" ".join(t) for t in refs] for i, refs in enumerate(refs_tok)}
    bleu, bleu_per_image = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per_image = Cider().compute_score(gts, res)
    return {
        "name": name,
        "candidates": [c for c, _ in corpus],
        "references": [refs for _, refs in corpus],
        "candidates_tokenized": [" ".join(t) for t in cand_tok],
        "references_tokenized": [[" ".join(t) for t in refs] for refs in refs_tok],
        "bleu": [float(b) for b in bleu],
        # pycocoevalcap returns one list per n; stored per image here.
        "bleu_per_image": [[float(bleu_per_image[k][i]) for k in range(4)]
                           for i in range(len(corpus))],
        "cider": float(cider),
        "cider_per_image": [float(s) for s in cider_per_image],
    }


def main() -> None:
    corpora = [
        score("edge_cases", EDGE_CASES),
        score("random", random_corpus(0, 40)),
        score("no_4gram_match", NO_4GRAM),
        score("single_image", SINGLE_IMAGE),
        score("all_empty", ALL_EMPTY),
    ]
    fixture = {
        "generator": "tools/metrics_reference.py",
        "reference": f"pycocoevalcap {version('pycocoevalcap')}: Bleu(4), Cider()",
        "tokenizer": "lowercase, delete string.punctuation, split on whitespace",
        "corpora": corpora,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "captions.json"
    path.write_text(json.dumps(fixture, indent=1) + "\n")
    for c in corpora:
        bleu = " ".join(f"{b:.6f}" for b in c["bleu"])
        print(f"{c['name']:>15}: {len(c['candidates']):2} images  "
              f"BLEU-1..4 {bleu}  CIDEr-D {c['cider']:.6f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
