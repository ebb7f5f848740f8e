"""Recordings: the in-memory type, readers for every supported format, the native format, and the
synthetic generator. Import from here::

    from rtcalm.data import Recording, load_recording, save_recording, make_synthetic
"""

from rtcalm.data.native import read_native, save_recording
from rtcalm.data.readers import detect_format, load_recording
from rtcalm.data.recording import Recording, RecordingMeta, TrialTable
from rtcalm.data.synthetic import SyntheticConfig, make_synthetic

__all__ = [
    "Recording",
    "RecordingMeta",
    "SyntheticConfig",
    "TrialTable",
    "detect_format",
    "load_recording",
    "make_synthetic",
    "read_native",
    "save_recording",
]
