"""The MPT paper's published numbers that we could verify, for printing beside ours.

Only numbers found in the project's sources (``/work/shared/SPEC.md`` and
``/work/shared/research/*.md``) are here. The full text of the paper (arXiv 2508.09446) was not
available to us (``research/peers.md``: "Only the abstract and introduction ... were available"), so
its accuracy and F1 values for Tables I-XI and Fig. 5 are unknown and shown as ``n/a``; nothing is
guessed. What is known (SPEC §7): MPT with ViT-B/16, r = 8, K = 5 trains about 5.5 M parameters and
costs about 18.7 GFLOPs per clip in the paper's convention (multiply-accumulates).

Entry format: ``PAPER[table][row_id] = {'acc': %, 'f1': %, 'tparas_m': millions, 'gflops': G}``;
a missing key or ``None`` means "not available" (printed ``n/a``).
"""

from typing import Dict, Optional

# The default MPT configuration (ViT-B/16, motion prompts K = 5, group adapters r = 8, alpha 20):
# SPEC §7, "about 5.5 M" trainable parameters and "about 18.7 GFLOPs" (MACs) per clip.
_MPT_COST = {'tparas_m': 5.5, 'gflops': 18.7}

# The row of each table that is the default MPT configuration (see mpt_jax/tables.py).
_DEFAULT_ROWS = {'V': 'mpt', 'VI': 'mpt', 'VII': 'motion', 'VIII': 'group', 'IX': 'B_16',
                 'X': 'alpha_20', 'XI': 'r_8', 'fig5': 'K_5', 'main': 'mpt'}

PAPER: Dict[str, Dict[str, Dict[str, Optional[float]]]] = {
    table: {row: dict(_MPT_COST)} for table, row in _DEFAULT_ROWS.items()}

SOURCE = ('SPEC §7 (#Tparas ~5.5 M, ~18.7 GFLOPs for the default MPT); the paper\'s Acc/F1 '
          'were not available to us (n/a)')


def paper_row(table: str, row_id: str) -> Dict[str, Optional[float]]:
  """The published numbers of one row (``None`` where not available)."""
  entry = PAPER.get(table, {}).get(row_id, {})
  return {k: entry.get(k) for k in ('acc', 'f1', 'tparas_m', 'gflops')}
