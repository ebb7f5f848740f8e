"""Recordings: the in-memory type, readers for every supported format and the native format. Import
from here::

    from rtcalm.data import Recording, load_recording, save_recording

Simulated recordings (the synthetic generator, the visual-cortex simulator) live in :mod:`rtcalm.sim`.
"""

from rtcalm.data.native import read_native, save_recording
from rtcalm.data.readers import detect_format, load_recording
from rtcalm.data.recording import Recording, RecordingMeta, TrialTable

__all__ = [
    "Recording",
    "RecordingMeta",
    "TrialTable",
    "detect_format",
    "load_recording",
    "read_native",
    "save_recording",
]
