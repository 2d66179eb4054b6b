"""Contextual forgetting (paper 1): are the upstream images a task makes the model forget
semantically close to that task's domain?

Each upstream class has a WordNet 3.0 synset (ImageNet's wnids are noun offsets, so the class synset
is exact); each task has a domain concept (``car.n.01`` after Cars). The Wu-Palmer similarity of
every class to the domain gives every test image a similarity. The statement "forgetting is
contextual" becomes a test:

* statistic: the mean similarity of the forgotten images (right before the task, wrong after);
* null hypothesis: the forgotten images are a random subset, of the same size, of the images that
  could be forgotten (those right before the task);
* one-sided permutation p-value ``(1 + #{null >= observed}) / (1 + permutations)``.

The figure compares the similarity distribution of forgotten images with that of all upstream test
images (paper 1's figure 4, each class weighted by its image counts); the difference of their means
is reported beside the p-value. Paper 1's code matched class *names* token by token instead of using
the class synset; ``mode='tokens'`` reproduces that (:func:`token_similarity`): the synonyms of the
class (all lemma names of its synset, or its name), joined by spaces, are tokenised as
``nltk.word_tokenize`` does, each token takes its best Wu-Palmer match over all its senses (every part
of speech) against all senses of the domain *word* ("car" after Cars, "plane" after Aircraft), and the
matches above 0 are averaged. The matches are NLTK's ``Synset.wup_similarity`` with its defaults, as
paper 1's code calls it: a pair that is not two nouns (``eat.v.01`` and ``car.n.02``) meets at a
simulated root of depth 1, so such a token scores a little above 0 (2/13 here) and counts in the mean.
Source: AlbinSou/lora_cl_analysis, ``notebooks/samples.ipynb``, ``word_similarity`` and
``average_similarity``; NLTK >= 3.6 simulates the root for every part of speech, and the code of these
functions in NLTK 3.8.1 (paper 1's time) equals that of 3.10.

Imports only ``wordnet`` (NLTK's WordNet 3.0, loaded once): the predictions come from the caller.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from forgetlab import wordnet


def as_synset(spec: str):
    """A synset from a name (``car.n.01``) or an ImageNet wnid (``n02958343``)."""
    return wordnet.synset_from_wnid(spec) if re.fullmatch(r"n\d{8}", spec) else wordnet.synset(spec)


@functools.lru_cache(maxsize=None)
def _best_token_match(token: str, domain_word: str) -> float:
    """The best Wu-Palmer similarity of any sense of ``token`` (any part of speech, found through
    WordNet's morphology: "eating" has eat.v.01) to any sense of ``domain_word``, in [0, 1]; 0 when
    either has no sense. Senses of different parts of speech meet at NLTK's simulated root (depth 1),
    so they score 2 / (path lengths to the root + 2), small but above 0: paper 1's code did the same."""
    senses, domains = wordnet.reader().synsets(token), wordnet.reader().synsets(domain_word)
    return max((float(s.wup_similarity(d, simulate_root=True) or 0.0) for s in senses for d in domains), default=0.0)


def token_similarity(names: str | list[str], domain_word: str) -> float:
    """Paper 1's name matching for one class: the mean over the tokens of its ``names`` (every synonym,
    joined by spaces as its code joins them) of their best match to ``domain_word``, counting only
    matches above 0 (0 when none is). The tokenizer is the one ``nltk.word_tokenize`` applies to each
    sentence (``NLTKWordTokenizer``; ImageNet's names are one sentence each, so no Punkt model is needed)."""
    from nltk.tokenize import NLTKWordTokenizer

    text = " ".join([names] if isinstance(names, str) else names).replace("_", " ")
    scores = [
        score
        for token in NLTKWordTokenizer().tokenize(text)
        if (score := _best_token_match(token.lower(), domain_word)) > 0
    ]
    return float(np.mean(scores)) if scores else 0.0


def class_similarities(
    domain: str,
    synsets: list[str] | None = None,
    names: list[str] | None = None,
    mode: str = "synset",
    domain_word: str | None = None,
) -> np.ndarray:
    """Wu-Palmer similarity of every upstream class to the ``domain`` concept (``mode='synset'``), or
    paper 1's token matching of the class names to ``domain_word`` (``mode='tokens'``; default: the
    domain synset's first lemma). In token mode a class with a synset contributes all its lemma names
    (ImageNet's class names are those lemmas), otherwise its name."""
    target = as_synset(domain)
    if mode == "synset":
        if not synsets:
            raise ValueError("mode 'synset' needs the classes' synsets")
        return np.array([wordnet.wup_similarity(as_synset(s), target) for s in synsets])
    if mode == "tokens":
        if not names and not synsets:
            raise ValueError("mode 'tokens' needs the class names or synsets")
        word = domain_word or target.lemma_names()[0]
        if synsets:
            return np.array([token_similarity(as_synset(s).lemma_names(), word) for s in synsets])
        return np.array([token_similarity(n, word) for n in names])
    raise ValueError(f"unknown similarity mode '{mode}'; use 'synset' or 'tokens'")


@dataclass
class ContextualTest:
    forgotten_per_class: np.ndarray  # image counts, the weights of the forgotten distribution
    images_per_class: np.ndarray  # image counts of all upstream test images
    similarity: np.ndarray  # per class
    mean_forgotten: float
    mean_all: float
    mean_candidates: float  # over the images that were right before (the null's pool)
    p_value: float
    forgotten: int
    permutations: int
    domain: str | None = None  # the task's domain concept, where the caller knows it
    task: str | None = None  # the task after which images were forgotten
    classes: list[str] | None = None  # upstream class names, one per entry of ``similarity``
    synsets: list[str] | None = None  # their WordNet synsets (ImageNet wnids)

    @property
    def difference(self) -> float:
        """Mean similarity of forgotten images minus that of all test images (paper 1's comparison)."""
        return self.mean_forgotten - self.mean_all

    def summary(self) -> str:
        """One line: forgotten images, the two mean similarities, their difference and the p-value."""
        where = f" after {self.task}" if self.task else ""
        domain = f" to {self.domain}" if self.domain else ""
        if self.forgotten == 0:
            return (
                f"contextual forgetting{where}: no upstream test image "
                f"forgotten ({int(self.images_per_class.sum())} images)"
            )
        return (
            f"contextual forgetting{where}: {self.forgotten} upstream test images forgotten of "
            f"{int(self.images_per_class.sum())}; mean similarity{domain} {self.mean_forgotten:.3f} "
            f"(forgotten) vs {self.mean_all:.3f} (all), difference {self.difference:+.3f}; "
            f"one-sided permutation p = {self.p_value:.2g} ({self.permutations} permutations)"
        )

    def __repr__(self) -> str:
        return f"ContextualTest({self.summary()})"

    def to_frame(self):
        """A pandas DataFrame with a row per upstream class: ``class`` (its name where known, else its
        index), ``synset``, ``similarity`` (Wu-Palmer, 0..1), ``images`` and ``forgotten`` (counts), and
        ``forgotten_pct`` (percent of the class's test images), most forgotten first."""
        import pandas as pd

        count = len(self.similarity)
        names = self.classes if self.classes and len(self.classes) == count else [str(c) for c in range(count)]
        frame = pd.DataFrame(
            {
                "class": names,
                "synset": self.synsets if self.synsets and len(self.synsets) == count else [None] * count,
                "similarity": self.similarity,
                "images": self.images_per_class,
                "forgotten": self.forgotten_per_class,
            }
        )
        frame["forgotten_pct"] = 100 * frame["forgotten"] / frame["images"].where(frame["images"] > 0)
        return frame.sort_values(["forgotten", "similarity"], ascending=False, kind="stable").reset_index(drop=True)


def permutation_p_value(values: np.ndarray, chosen: np.ndarray, permutations: int, seed: int) -> float:
    """One-sided: how often a random subset of ``values`` of ``chosen.sum()`` items has a mean at least
    that of the chosen ones."""
    count = int(chosen.sum())
    if count == 0 or count == len(values):
        return 1.0
    observed = values[chosen].mean()
    # Images of one class share a value, so a random subset is a multivariate hypergeometric draw of
    # counts per distinct value: the same null distribution as shuffling, at a fraction of the cost.
    distinct, inverse = np.unique(values, return_inverse=True)
    pool = np.bincount(inverse, minlength=len(distinct))
    draws = np.random.default_rng(seed).multivariate_hypergeometric(pool, count, size=permutations)
    null = draws @ distinct / count
    # Ties within float rounding count as "at least as large".
    return float((1 + np.sum(null >= observed - 1e-12)) / (1 + permutations))


def contextual_forgetting(
    before: np.ndarray,
    after: np.ndarray,
    labels: np.ndarray,
    similarity: np.ndarray,
    *,
    permutations: int = 10_000,
    seed: int = 0,
) -> ContextualTest:
    before, after, labels = np.asarray(before), np.asarray(after), np.asarray(labels)
    image_similarity = similarity[labels]
    candidates = before == labels
    forgotten = candidates & (after != labels)
    num_classes = len(similarity)
    return ContextualTest(
        forgotten_per_class=np.bincount(labels[forgotten], minlength=num_classes),
        images_per_class=np.bincount(labels, minlength=num_classes),
        similarity=similarity,
        mean_forgotten=float(image_similarity[forgotten].mean()) if forgotten.any() else float("nan"),
        mean_all=float(image_similarity.mean()),
        mean_candidates=float(image_similarity[candidates].mean()) if candidates.any() else float("nan"),
        p_value=permutation_p_value(image_similarity[candidates], forgotten[candidates], permutations, seed),
        forgotten=int(forgotten.sum()),
        permutations=permutations,
    )
