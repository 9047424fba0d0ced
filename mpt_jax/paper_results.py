"""Every number the MPT paper publishes (arXiv 2508.09446, Tables I-XI and Fig. 5), as printed.

One dict, :data:`PAPER`, keyed by table. Each table has its ``source`` ("arXiv 2508.09446, Table N"),
a ``title``, the ``dataset`` it was measured on (``None`` for Tables I-IV, which have a column per
dataset) and its ``rows`` in the paper's order. A row is ``(row_id, label, values)``:

* ``row_id``: for Tables VI-XI and Fig. 5 the id of our row that reproduces it (the grids of
  :mod:`mpt_jax.tables` are these ids, so the two cannot drift); for Tables I-V the method's name;
* ``label``: the row as the paper names it;
* ``values``: strings exactly as printed (``'81.10'``, ``'0.003'``); ``None`` where the paper prints
  ``-`` or nothing. Keys: ``acc`` and ``f1`` (%, LOSO), ``tparas_m`` (millions of trainable
  parameters), ``gflops`` (per clip, counted as multiply-accumulates), ``year``. Tables I-IV have
  one ``(acc, f1)`` pair per dataset: ``values[dataset] = {'acc': ..., 'f1': ...}``.

:func:`paper_row` gives a row's numbers as floats. The paper ran PyTorch on one RTX 4090 with Adam,
batch 16, learning rate 3e-4, alpha 20, r 8, 16 frames, 224 px, Butterworth band 0.4-4 Hz
(:data:`SETTINGS`).
"""

from typing import Any, Dict, List, Optional, Tuple

SOURCE = 'arXiv 2508.09446'

# The paper's training settings (Section IV) and datasets (Section IV-A), as printed.
SETTINGS = {'framework': 'PyTorch', 'gpu': 'RTX 4090', 'optimizer': 'Adam', 'batch_size': '16',
            'learning_rate': '3e-4', 'alpha': '20', 'r': '8', 'frames': '16', 'image_size': '224',
            'band_hz': '0.4-4'}

# Class order and counts as the paper's datasets section lists them (Fig. 4 uses this order).
DATASETS = {
    'casme2': {'name': 'CASME II', 'samples': 247, 'subjects': 27,
               'classes': (('happiness', 32), ('surprise', 25), ('disgust', 64),
                           ('repression', 27), ('others', 99))},
    'samm': {'name': 'SAMM', 'samples': 136, 'subjects': None,
             'classes': (('anger', 57), ('contempt', 12), ('happiness', 26), ('surprise', 15),
                         ('other', 26))},
    'smic': {'name': 'SMIC-HS', 'samples': 164, 'subjects': 16,
             'classes': (('positive', 51), ('negative', 70), ('surprise', 43))},
}

Row = Tuple[str, str, Dict[str, Any]]


def _pair(text: Optional[str]) -> Optional[Dict[str, Optional[str]]]:
  """``'51.00 / 47.00'`` -> ``{'acc': '51.00', 'f1': '47.00'}``; ``'-'`` entries -> ``None``."""
  if text is None:
    return None
  if text == '-':
    return {'acc': None, 'f1': None}
  acc, f1 = (v.strip() for v in text.split('/'))
  return {'acc': None if acc == '-' else acc, 'f1': None if f1 == '-' else f1}


def _sota(rows) -> List[Row]:
  """Rows of Tables I-IV: (method, year, CASME II, SAMM, SMIC), ``None`` = not in that column."""
  return [(m, m, {'year': y, 'casme2': _pair(c), 'samm': _pair(s), 'smic': _pair(h)})
          for m, y, c, s, h in rows]


def _acc_f1(rows) -> List[Row]:
  """Rows (row_id, label, #Tparas or None, Acc, F1) of Tables VI-XI."""
  return [(rid, label, {'tparas_m': tp, 'acc': acc, 'f1': f1})
          for rid, label, tp, acc, f1 in rows]


PAPER: Dict[str, Dict[str, Any]] = {
    'I': {'title': 'Table I: state of the art on CASME II (LOSO)', 'dataset': 'casme2'},
    'II': {'title': 'Table II: state of the art on SAMM (LOSO)', 'dataset': 'samm'},
    'III': {'title': 'Table III: state of the art on SMIC (LOSO)', 'dataset': 'smic'},
    'IV': {'title': 'Table IV: transfer-learning methods', 'dataset': None, 'rows': _sota([
        ('KD', '2020', '72.61 / 67.00', '-', '76.06 / 71.00'),
        ('MicroNet', '2020', '75.60 / 70.10', '74.10 / 73.60', '76.80 / 74.40'),
        ('M2MTNet', '2021', '79.10 / 74.80', '76.70 / 76.40', '78.60 / 77.80'),
        ('NSPT', '2022', '-', '-', '79.47 / 79.37'),
        ('PLMaM-Net', '2024', '82.52 / 79.98', '76.47 / 69.61', '82.32 / 82.21'),
        ('MPT', '2024', '87.85 / 86.04', '87.50 / 85.04', '86.59 / 86.01'),
    ])},
    'V': {'title': 'Table V: efficiency', 'dataset': 'smic', 'rows': [
        (m, m, {'tparas_m': tp, 'gflops': g, 'acc': a, 'f1': f})
        for m, tp, g, a, f in (
            ('OFF-ApexNet', '2.7', '0.1', '74.60', '71.04'),
            ('AMAN', '8.4', '81.5', '79.87', '77.08'),
            ('VGG-16', '138.4', '31.0', None, '59.64'),
            ('FeaRef', '26.0', '0.1', None, '73.72'),
            ('SLSTT', '93.1', '791.4', '75.00', '74.00'),
            ('SRMCL', '315.7', '124.3', '78.98', '78.87'),
            ('MPT', '5.5', '18.7', '86.59', '86.01'))]},
    'VI': {'title': 'Table VI: learning strategies', 'dataset': 'smic', 'rows': _acc_f1([
        ('scratch', 'ViT-B/16 without pretraining', '86.4', '73.17', '72.35'),
        ('full_finetune', 'full fine-tuning (in21k)', '86.4', '77.44', '76.65'),
        ('linear_probe', 'partial fine-tuning (head only)', '0.003', '71.95', '70.27'),
        ('prompt_only', '+ motion prompts', '0.2', '82.92', '82.33'),
        ('adapter_only', '+ group adapter', '3.5', '79.27', '78.43'),
        ('mpt', 'MPT (both)', '5.5', '86.59', '86.01'),
    ])},
    'VII': {'title': 'Table VII: prompts', 'dataset': 'smic', 'rows': _acc_f1([
        ('none', 'without prompts', '3.5', '79.27', '78.43'),
        ('vpt_shallow', 'VPT-Shallow', '5.5', '81.10', '80.84'),
        ('vpt_deep', 'VPT-Deep', '5.8', '82.32', '81.79'),
        ('motion', 'MPT (motion prompts)', '5.5', '86.59', '86.01'),
    ])},
    'VIII': {'title': 'Table VIII: adapters', 'dataset': 'smic', 'rows': _acc_f1([
        ('none', 'MPT without adapter', '0.2', '82.92', '82.33'),
        ('shared', 'primitive adapter', '2.0', '84.15', '83.56'),
        ('group', 'group adapter (MPT)', '5.5', '86.59', '86.01'),
    ])},
    'IX': {'title': 'Table IX: backbones', 'dataset': 'smic', 'rows': _acc_f1([
        ('B_16', 'ViT-B/16 (in21k)', None, '86.59', '86.01'),
        ('B_32', 'ViT-B/32 (in21k)', None, '84.76', '83.95'),
        ('clip_B_16', 'CLIP ViT-B/16', None, '85.37', '84.64'),
        ('clip_B_32', 'CLIP ViT-B/32', None, '83.54', '82.56'),
    ])},
    'X': {'title': 'Table X: magnification factor alpha', 'dataset': 'smic', 'rows': _acc_f1([
        ('alpha_0', 'alpha = 0', None, '81.10', '80.54'),
        ('alpha_10', 'alpha = 10', None, '85.37', '84.79'),
        ('alpha_20', 'alpha = 20', None, '86.59', '86.01'),
        ('alpha_30', 'alpha = 30', None, '81.70', '81.44'),
        ('alpha_50', 'alpha = 50', None, '78.05', '77.56'),
    ])},
    'XI': {'title': 'Table XI: adapter reduction factor r', 'dataset': 'smic', 'rows': _acc_f1([
        ('r_4', 'r = 4', None, '85.98', '85.32'),
        ('r_8', 'r = 8', None, '86.59', '86.01'),
        ('r_12', 'r = 12', None, '84.76', '84.05'),
    ])},
    'fig5': {'title': 'Fig. 5: number of motion prompts K', 'dataset': 'smic', 'rows': _acc_f1([
        ('K_0', 'K = 0', None, None, None),
        ('K_1', 'K = 1', None, None, None),
        ('K_3', 'K = 3', None, None, None),
        ('K_5', 'K = 5', None, '86.59', '86.01'),
        ('K_7', 'K = 7', None, None, None),
    ]), 'note': ('The paper prints only K = 5 (86.59 / 86.01, the best) as numbers. Its other bars '
                 'are not printed: every K >= 1 beats K = 0, both metrics rise from K = 0 to 5 and '
                 'fall slightly at 7.')},
}

# Tables I-III: one list of methods with a column per dataset; each table keeps the methods that
# have a value in its column (the MPT row last), in the paper's order.
_SOTA_ROWS = _sota([
    ('LBP-TOP', '2016 / 2016 / 2014', '51.00 / 47.00', '34.56 / 28.92', '53.56 / -'),
    ('LBP-SIP', '2016', None, '36.03 / 31.33', None),
    ('STCLQP', '2017', None, None, '64.02 / 63.81'),
    ('CNN+LSTM', '2016', '60.98 / -', None, None),
    ('DSSN', '2019', '70.78 / 72.97', '57.35 / 46.44', '63.41 / 64.62'),
    ('TSCNN', '2019', '80.97 / 80.70', '63.53 / 60.65', '72.74 / 72.36'),
    ('KD', '2020', '72.61 / 67.00', None, '76.10 / 71.00'),
    ('Graph-TCN', '2020', '73.98 / 72.46', '75.00 / 69.85', None),
    ('AUGCN', '2021', None, '74.26 / 70.45', None),
    ('SLSTT', '2022', '75.81 / 75.30', '72.39 / 64.00', '75.00 / 74.00'),
    ('CMNET', '2023', '78.05 / 73.99', '78.68 / 77.19', '79.27 / 80.11'),
    ('μ-BERT', '2023', '- / 85.53', '- / 83.86', '- / 85.50'),
    ('PLMaM-Net', '2024', '82.52 / 79.98', '76.47 / 69.61', '82.32 / 82.21'),
    ('SRMCL', '2024', '83.20 / 82.86', '74.63 / 65.99', '78.98 / 78.87'),
    ('FFDIN', '2024', '85.77 / 83.09', '79.33 / 79.27', '79.07 / 73.84'),
    ('LTR3O', '2025', '81.78 / 79.05', '80.15 / 75.74', '81.10 / 81.32'),
    ('MPT', '2025', '87.85 / 86.04', '87.50 / 85.04', '86.59 / 86.01'),
])
for _table in ('I', 'II', 'III'):
  _ds = PAPER[_table]['dataset']
  PAPER[_table]['rows'] = [(rid, label, {'year': v['year'], _ds: v[_ds]})
                           for rid, label, v in _SOTA_ROWS if v[_ds] is not None]
for _table, _entry in PAPER.items():
  _entry['source'] = f'{SOURCE}, ' + ('Fig. 5' if _table == 'fig5' else f'Table {_table}')

# The state-of-the-art table of each dataset (Tables I-III).
MAIN_TABLE = {'casme2': 'I', 'samm': 'II', 'smic': 'III'}
# The row of each ablation table that is the paper's default MPT (ViT-B/16, K 5, r 8, alpha 20).
DEFAULT_ROW = {'V': 'MPT', 'VI': 'mpt', 'VII': 'motion', 'VIII': 'group', 'IX': 'B_16',
               'X': 'alpha_20', 'XI': 'r_8', 'fig5': 'K_5'}


def _float(v: Optional[str]) -> Optional[float]:
  return None if v is None else float(v)


def rows(table: str) -> List[Row]:
  """The paper's rows of a table, in its order."""
  return PAPER[table]['rows']


def row_ids(table: str) -> List[str]:
  return [rid for rid, _, _ in rows(table)]


def paper_row(table: str, row_id: str, dataset: Optional[str] = None) -> Dict[str, Any]:
  """One row's published numbers as floats (``None`` where the paper prints none).

  Keys ``acc``, ``f1``, ``tparas_m``, ``gflops`` and ``label``. Tables I-IV need ``dataset``
  (``casme2``, ``samm`` or ``smic``). The paper prints GFLOPs only in Table V; for the default MPT
  row of Tables VI-XI and Fig. 5 (the same model) that value and #Tparas are given too.
  """
  label, values = {rid: (label, v) for rid, label, v in rows(table)}[row_id]
  if table in ('I', 'II', 'III', 'IV'):
    values = values.get(dataset or PAPER[table]['dataset']) or {}
  elif DEFAULT_ROW.get(table) == row_id and table != 'V':
    mpt = {rid: v for rid, _, v in rows('V')}['MPT']
    values = {**values, 'gflops': mpt['gflops'], 'tparas_m': values['tparas_m'] or mpt['tparas_m']}
  out: Dict[str, Any] = {k: _float(values.get(k)) for k in ('acc', 'f1', 'tparas_m', 'gflops')}
  out['label'] = label
  return out
