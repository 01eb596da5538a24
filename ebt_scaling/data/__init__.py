"""Corpora, tokenizers and batching (numpy + tokenizers; never torch).

``open_data(DataConfig, sequence_len, seed=)`` is the training entry point: a ``StoreData`` (``sampler.py``:
packed and document sampling of a token store, its splits, one validation set per sweep) over ``store:DIR``
or the store the cache prepares for a built-in source (``corpus.builtin_store``).
``load_corpus(DataConfig, sequence_len) -> TokenCorpus`` is the cache's in-memory view (think, analysis);
see ``corpus.py`` for the cache pipeline and its block split, ``store.py`` for token stores, ``sources.py`` for
the sources, ``synthetic.py`` for the Markov source with a known entropy rate. Documented in
``docs/data.md``.
"""

from ebt_scaling.data.corpus import TokenCorpus, load_corpus, open_data, split_blocks
from ebt_scaling.data.synthetic import synthetic_entropy_rate, synthetic_unigram_entropy

__all__ = ["TokenCorpus", "load_corpus", "open_data", "split_blocks", "synthetic_entropy_rate",
           "synthetic_unigram_entropy"]
