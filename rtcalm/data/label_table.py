"""Label tables: a lab's CSV/TSV of trial or event onsets with their labels, as a :class:`TrialTable`.

Format (one header row, then one row per trial / event)::

    frame,direction_deg,stimulus
    120,0,grating
    240,45,grating
    360,,gray            <- refused: every cell needs a value

- The delimiter is a tab when the header row contains one, else a comma. A UTF-8 byte-order mark (as
  spreadsheet programs write) is skipped; cells are stripped of surrounding spaces; blank lines are skipped.
- The first column is ``frame`` (the onset's imaging-frame index, 0-based; "12.0" is accepted, "12.5" is
  not) or ``time`` (the onset in seconds from the recording's first frame; frame ``k`` is acquired at
  ``k / rate_hz``, so the onset's frame is the nearest one, ``floor(time * rate_hz + 0.5)``).
- Every other column is one label. A column whose cells all parse as numbers is numeric (float64) and
  must be finite (NaN/Inf are refused); any other column is a string column (class names). Names must be
  unique and not ``frame``, ``time``, ``onset_s`` or ``start_frame``.
- Every onset must fall inside the recording and no two rows may start on the same frame. Rows are
  sorted by frame.

The result has ``onset_s`` (the ``time`` value, or ``frame / rate_hz``), ``start_frame`` (int64, as in
the Allen stimulus tables) and the label columns, so it can stand in for a recording's ``trials``. Label
tables describe contiguous recordings; a trial-structured recording already has one row per epoch.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rtcalm.data.recording import Recording, TrialTable
from rtcalm.errors import RecordingError

ONSET_COLUMNS = ("frame", "time")
RESERVED_NAMES = (*ONSET_COLUMNS, "onset_s", "start_frame")


@dataclass
class _Row:
    line: int
    cells: list[str]


def read_label_table(path, recording: Recording) -> TrialTable:
    """Read a label table for ``recording`` (see the module docstring). Every problem raises
    :class:`RecordingError` naming the table file, and the line where there is one."""
    path = Path(path)
    if recording.is_trial_structured:
        raise RecordingError(path, f"label tables are for contiguous recordings; {recording.meta.source or 'the recording'} "
                                   f"is trial-structured ({recording.n_trials} epochs)")
    header, rows = _read_rows(path)
    onset_name, label_names = _check_header(path, header)
    frames, onset_s = _onsets(path, onset_name, rows, recording)
    order = np.argsort(frames, kind="stable")
    columns = {"onset_s": onset_s[order], "start_frame": frames[order]}
    for k, name in enumerate(label_names, start=1):
        columns[name] = _label_column(path, name, [row.cells[k] for row in rows], [row.line for row in rows])[order]
    return TrialTable(columns)


def _read_rows(path: Path) -> tuple[list[str], list[_Row]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise RecordingError(path, "file not found") from None
    except IsADirectoryError:
        raise RecordingError(path, "is a directory, expected a CSV/TSV label table") from None
    except UnicodeDecodeError as exc:
        raise RecordingError(path, f"is not UTF-8 text (byte {exc.start}); expected a CSV/TSV label table") from None
    first_line = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        lines = [_Row(reader.line_num, [cell.strip() for cell in cells]) for cells in reader if cells]
    except csv.Error as exc:
        raise RecordingError(path, f"line {reader.line_num}: {exc}") from None
    if not lines:
        raise RecordingError(path, "is empty; expected a header row starting with 'frame' or 'time'")
    header, rows = lines[0].cells, lines[1:]
    for row in rows:
        if len(row.cells) != len(header):
            raise RecordingError(path, f"line {row.line} has {len(row.cells)} fields, the header has {len(header)}")
    if not rows:
        raise RecordingError(path, "has a header but no rows")
    return header, rows


def _check_header(path: Path, header: list[str]) -> tuple[str, list[str]]:
    if header[0] not in ONSET_COLUMNS:
        raise RecordingError(path, f"the first column must be 'frame' (frame index) or 'time' (seconds), got {header[0]!r}")
    labels = header[1:]
    if not labels:
        raise RecordingError(path, "has no label columns after the onset column")
    for name in labels:
        if not name:
            raise RecordingError(path, "the header has an empty column name")
        if name in RESERVED_NAMES:
            raise RecordingError(path, f"column name {name!r} is reserved (onset column or generated column)")
    duplicates = sorted({name for name in labels if labels.count(name) > 1})
    if duplicates:
        raise RecordingError(path, f"duplicate column names in the header: {', '.join(duplicates)}")
    return header[0], labels


def _onsets(path: Path, onset_name: str, rows: list[_Row], recording: Recording) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices (int64) and onset times (s), in file order, all checked."""
    n_frames, rate = recording.n_frames, recording.rate_hz
    frames = np.empty(len(rows), dtype=np.int64)
    onset_s = np.empty(len(rows), dtype=np.float64)
    for k, row in enumerate(rows):
        value = _finite_number(row.cells[0])
        if onset_name == "frame":
            if value is None or value != int(value):
                raise RecordingError(path, f"line {row.line}: frame {row.cells[0]!r} is not an integer frame index")
            frames[k], onset_s[k] = int(value), int(value) / rate
            where = f"frame {frames[k]}"
        else:
            if value is None or value < 0:
                raise RecordingError(path, f"line {row.line}: time {row.cells[0]!r} is not a time in seconds >= 0")
            frames[k], onset_s[k] = int(np.floor(value * rate + 0.5)), value  # nearest frame, halves up
            where = f"time {value:g} s (frame {frames[k]} at {rate:g} Hz)"
        if not 0 <= frames[k] < n_frames:
            raise RecordingError(path, f"line {row.line}: {where} is outside the recording (frames 0..{n_frames - 1})")
    _refuse_shared_frames(path, frames, rows)
    return frames, onset_s


def _refuse_shared_frames(path: Path, frames: np.ndarray, rows: list[_Row]) -> None:
    first_line_of: dict[int, int] = {}
    for frame, row in zip(frames.tolist(), rows, strict=True):
        if frame in first_line_of:
            raise RecordingError(path, f"lines {first_line_of[frame]} and {row.line} both start at frame {frame}")
        first_line_of[frame] = row.line


def _label_column(path: Path, name: str, cells: list[str], lines: list[int]) -> np.ndarray:
    for cell, line in zip(cells, lines, strict=True):
        if not cell:
            raise RecordingError(path, f"line {line}: empty value in column {name!r}")
    numbers = [_number(cell) for cell in cells]
    if any(number is None for number in numbers):
        return np.array(cells, dtype=str)
    for number, cell, line in zip(numbers, cells, lines, strict=True):
        if not np.isfinite(number):
            raise RecordingError(path, f"line {line}: column {name!r} has the non-finite value {cell!r}")
    return np.array(numbers, dtype=np.float64)


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def _finite_number(cell: str) -> float | None:
    value = _number(cell)
    return value if value is not None and np.isfinite(value) else None
