"""Corpora, tokenizers and batching (numpy + tokenizers; never torch).

``load_corpus(DataConfig, sequence_len) -> TokenCorpus`` is the entry point; see ``corpus.py`` for the
pipeline and split, ``sources.py`` for the sources, ``synthetic.py`` for the Markov source with a known
entropy rate. Documented in ``docs/data.md``.
"""

from ebt_scaling.data.corpus import TokenCorpus, load_corpus, split_blocks
from ebt_scaling.data.synthetic import synthetic_entropy_rate, synthetic_unigram_entropy

__all__ = ["TokenCorpus", "load_corpus", "split_blocks", "synthetic_entropy_rate", "synthetic_unigram_entropy"]
