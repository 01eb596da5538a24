"""System-2 thinking for trained EBTs (issue 6; ebt-paper.md sections 9 and 16; ``docs/thinking.md``).

* ``metrics``  - pure: metric-name scheme, passes convention, % improvement, OOD magnitude (no torch).
* ``evaluate`` - torch: rebuild a model from a checkpoint, validation/OOD batches, perplexity per
  (inner steps, best-of-N samples) setting with shared seeds, per-token energies across steps (video runs:
  SmoothL1 and per-frame energies, issue 31.5). Never imports the database.
* ``service``  - composes a ``Store`` (passed in) with ``evaluate``: runs of a sweep -> metric series.
* ``pages``    - report pages drawn from the stored series (matplotlib, no torch).
"""
