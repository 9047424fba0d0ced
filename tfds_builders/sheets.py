"""Reading the releases' coding sheets: .xlsx/.xls workbooks, header rows, columns and cells.

The format is told by a file's content, not its name (an .xlsx saved as ``.xls`` is read as .xlsx);
a damaged, truncated or foreign file raises one :class:`tfds_builders.discovery.DatasetLayoutError`
naming it. Columns are found by name (case and spaces ignored), the header row by its first cell
(SAMM has a 13-row preamble), and cell values are read as the sheets write them (:func:`cell_text`,
:func:`to_int`).
"""

import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from tfds_builders import discovery


def to_int(value: Any) -> Optional[int]:
  try:
    return int(float(str(value).strip()))
  except (TypeError, ValueError):
    return None


def cell_text(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  return str(value).strip()


_XLSX_MAGIC = b'PK\x03\x04'  # .xlsx files are zip archives
_XLS_MAGIC = b'\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1'  # legacy .xls files are OLE2 compound files


def _pick_worksheet(path: str, names: Sequence[str], wanted: Optional[str]) -> str:
  """The worksheet to read: ``wanted`` if present, else the only one; else a clear error."""
  if wanted is None or wanted in names:
    return wanted if wanted is not None else names[0]
  if len(names) == 1:
    return names[0]
  raise discovery.DatasetLayoutError(f'{path}: no worksheet named {wanted!r} and several others '
                                     f'{list(names)}; expected the released file with its '
                                     f'{wanted!r} sheet')


def read_table(path: str, sheet: Optional[str] = None) -> Tuple[str, List[List[Any]]]:
  """``(worksheet name, rows of cell values)`` of an .xlsx or legacy .xls workbook.

  The format is decided by the file's content, not its name (an .xlsx saved as ``.xls`` is read
  as .xlsx); a file that is neither, or is truncated or damaged, raises one error naming it.
  """
  try:
    with open(path, 'rb') as f:
      magic = f.read(8)
  except OSError as e:
    raise discovery.DatasetLayoutError(f'{path}: cannot be read ({e.strerror or e})') from e
  if magic.startswith(_XLSX_MAGIC):
    import openpyxl  # pylint: disable=g-import-not-at-top
    try:
      with open(path, 'rb') as f:
        wb = openpyxl.load_workbook(f, read_only=True, data_only=True)
        name = _pick_worksheet(path, wb.sheetnames, sheet)
        table = [list(r) for r in wb[name].iter_rows(values_only=True)]
        wb.close()
    except discovery.DatasetLayoutError:
      raise
    except Exception as e:  # zipfile, XML and openpyxl errors for damaged files
      raise discovery.DatasetLayoutError(
          f'{path}: damaged .xlsx workbook, cannot be read ({type(e).__name__}: {e}); copy it '
          'again from the release') from e
    return name, table
  if magic.startswith(_XLS_MAGIC):
    import xlrd  # pylint: disable=g-import-not-at-top
    try:
      with open(os.devnull, 'w') as quiet:  # xlrd prints its warnings to stdout otherwise
        book = xlrd.open_workbook(path, logfile=quiet, on_demand=True)
        name = _pick_worksheet(path, book.sheet_names(), sheet)
        ws = book.sheet_by_name(name)
        table = [ws.row_values(i) for i in range(ws.nrows)]
        book.release_resources()
    except discovery.DatasetLayoutError:
      raise
    except Exception as e:  # xlrd raises XLRDError, IndexError, struct.error... on damaged files
      raise discovery.DatasetLayoutError(
          f'{path}: damaged .xls workbook, cannot be read ({type(e).__name__}: {e}); copy it '
          'again from the release') from e
    return name, table
  kind = 'empty file' if not magic else f'starts with bytes {magic[:4]!r}'
  raise discovery.DatasetLayoutError(f'{path}: not an Excel workbook ({kind}); expected the '
                                     '.xlsx/.xls coding sheet of the release')


def read_sheet(path: str, header_first_cell: str = 'Subject', sheet: Optional[str] = None,
               scan_rows: int = 30) -> Tuple[List[str], List[Tuple[int, List[Any]]]]:
  """Reads an .xlsx/.xls sheet whose header row starts with ``header_first_cell``.

  The header is found by scanning the first ``scan_rows`` rows (SAMM has a 13-row preamble).
  ``sheet``: the worksheet to read; when absent, the workbook's only worksheet (several others:
  an error listing them).

  Returns:
    ``(header, rows)`` with rows as ``(excel_row_number, cells)``; fully empty rows are dropped.
  """
  name, table = read_table(path, sheet)
  for i, row in enumerate(table[:scan_rows]):
    if row and cell_text(row[0]) == header_first_cell:
      header = [cell_text(c) for c in row]
      rows = [(j + 1, list(r)) for j, r in enumerate(table[i + 1:], start=i + 1)
              if any(cell_text(c) for c in r)]
      return header, rows
  raise discovery.DatasetLayoutError(f'{path}: no header row starting with '
                                     f'{header_first_cell!r} in the first {scan_rows} rows of '
                                     f'worksheet {name!r}')


def column_index(header: Sequence[str], names: Iterable[str], path: str) -> Dict[str, int]:
  """Maps each wanted column name to its index (case- and space-insensitive)."""
  norm = {re.sub(r'\s+', '', h).lower(): i for i, h in enumerate(header) if h}
  out, missing = {}, []
  for name in names:
    key = re.sub(r'\s+', '', name).lower()
    if key in norm:
      out[name] = norm[key]
    else:
      missing.append(name)
  if missing:
    raise discovery.DatasetLayoutError(f'{path}: missing column(s) {missing}; '
                                       f'found {[h for h in header if h]}')
  return out
