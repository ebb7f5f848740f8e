"""Recordings: the in-memory type, readers for every supported format and the native format. Import
from here::

    from rtcalm.data import Recording, load_recording, save_recording

Lab formats with options of their own: :func:`read_suite2p` (ΔF/F parameters), :func:`read_caiman`
(an explicit frame rate), and :func:`read_label_table` (a CSV/TSV of onsets and labels for a recording).
A stimulus movie (e.g. Allen's natural movies) is read with :func:`read_movie_template`.

Simulated recordings (the synthetic generator, the visual-cortex simulator) live in :mod:`rtcalm.sim`.
"""

from rtcalm.data.caiman import read_caiman
from rtcalm.data.label_table import read_label_table
from rtcalm.data.native import read_native, save_recording
from rtcalm.data.readers import detect_format, load_recording, read_movie_template
from rtcalm.data.recording import Recording, RecordingMeta, TrialTable
from rtcalm.data.suite2p import read_suite2p

__all__ = [
    "Recording",
    "RecordingMeta",
    "TrialTable",
    "detect_format",
    "load_recording",
    "read_caiman",
    "read_label_table",
    "read_movie_template",
    "read_native",
    "read_suite2p",
    "save_recording",
]
