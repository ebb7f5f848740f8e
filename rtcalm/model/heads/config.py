"""What a decoding head is, checked once: the configs of the two head families and their one error type.

- :class:`HeadConfig`: the EMA head (file version 1): a linear readout of the per-neuron hidden states
  pooled with an exponential moving average of ``pool_frames``.
- :class:`TimeResolvedConfig`: the time-resolved head (file versions 2 and 3): a linear readout of the
  last ``window_frames`` frames' features averaged in ``n_bins`` contiguous time bins. Its per-frame
  features (``features``) are

  ========== ============================================================ ===================
  features   per neuron and frame                                         width per neuron
  ========== ============================================================ ===================
  raw        the ΔF/F as the daemon received it (missing -> 0)            1
  backbone   the hidden state projected on ``components`` principal axes  components
  both       ΔF/F, then the projected hidden state                        1 + components
  ========== ============================================================ ===================

  A ``raw`` head has ``components == 0`` (nothing is projected). The bins split the window as
  np.array_split does, unless ``bin_sizes`` lists their lengths (oldest first): fit-head's nested bins
  (:func:`rtcalm.model.heads.linear.nested_bin_sizes`), and the average of heads with different bin
  counts (:func:`rtcalm.model.heads.averaging.average_heads`), which reads the union of their bin edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rtcalm.errors import RtcalmError

FEATURE_KINDS = ("raw", "backbone", "both")  # simplest first: inner-CV ties go to the earlier kind


class HeadError(RtcalmError, ValueError):
    pass


def _check_kind(kind: str, classes: list) -> None:
    if kind not in ("classification", "regression"):
        raise HeadError(f"head kind must be 'classification' or 'regression', got {kind!r}")
    if kind == "classification" and len(classes) < 2:
        raise HeadError("a classification head needs at least two classes")


@dataclass
class HeadConfig:
    name: str  # e.g. "direction", "speed"
    kind: str  # "classification" | "regression"
    n_neurons: int
    d_model: int
    pool_frames: float  # EMA time constant in frames (the response window length it was fitted on)
    classes: list[float] = field(default_factory=list)  # class values (e.g. directions in degrees)

    def __post_init__(self):
        _check_kind(self.kind, self.classes)
        if self.n_neurons < 1 or self.d_model < 1 or not self.pool_frames >= 1:
            raise HeadError("head sizes must be positive and pool_frames >= 1")

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1


@dataclass
class TimeResolvedConfig:
    name: str
    kind: str  # "classification" | "regression"
    n_neurons: int
    d_model: int  # the width of the backbone it reads (raw heads: of the model it was fitted beside)
    window_frames: int  # frames read (the response window the head was fitted on, at the model's rate)
    n_bins: int  # contiguous time bins of the window (np.array_split sizes)
    components: int  # principal axes of the hidden state kept per neuron (0 for a raw head)
    classes: list[float] = field(default_factory=list)
    pooling: str = "time_bins"
    features: str = "backbone"  # raw | backbone | both (version 2 files are all "backbone")
    bin_sizes: list[int] | None = None  # frames per bin, oldest first (version 4 files); None: np.array_split's

    def __post_init__(self):
        if self.pooling != "time_bins":
            raise HeadError(f"a time-resolved head has pooling 'time_bins', got {self.pooling!r}")
        if self.features not in FEATURE_KINDS:
            raise HeadError(f"features must be one of {', '.join(FEATURE_KINDS)}, got {self.features!r}")
        _check_kind(self.kind, self.classes)
        for key in ("n_neurons", "d_model", "window_frames", "n_bins"):
            if type(getattr(self, key)) is not int or getattr(self, key) < 1:
                raise HeadError(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if type(self.components) is not int:
            raise HeadError(f"components must be an integer, got {self.components!r}")
        if self.features == "raw" and self.components != 0:
            raise HeadError(f"a raw head projects nothing: components must be 0, got {self.components}")
        if self.features != "raw" and self.components < 1:
            raise HeadError(f"components must be a positive integer, got {self.components!r}")
        if self.n_bins > self.window_frames:
            raise HeadError(f"n_bins ({self.n_bins}) cannot exceed window_frames ({self.window_frames})")
        if self.components > self.d_model:
            raise HeadError(f"components ({self.components}) cannot exceed d_model ({self.d_model})")
        if self.bin_sizes is not None:
            sizes = self.bin_sizes
            if not isinstance(sizes, list) or any(type(s) is not int or s < 1 for s in sizes):
                raise HeadError(f"bin_sizes must be a list of positive integers, got {sizes!r}")
            if len(sizes) != self.n_bins or sum(sizes) != self.window_frames:
                raise HeadError(f"bin_sizes {sizes} must list n_bins ({self.n_bins}) sizes summing to window_frames "
                                f"({self.window_frames})")
            if sizes == self._equal_sizes():
                self.bin_sizes = None  # np.array_split's own: one spelling, a version 3 file

    @property
    def uses_raw(self) -> bool:
        return self.features in ("raw", "both")

    @property
    def uses_backbone(self) -> bool:
        return self.features in ("backbone", "both")

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1

    @property
    def width(self) -> int:
        """Features per neuron and frame."""
        return int(self.uses_raw) + (self.components if self.uses_backbone else 0)

    @property
    def frame_features(self) -> int:
        """Features per frame: N ΔF/F values, then N x components projected values (the layout of
        :meth:`TimeResolvedHead.frame_features`)."""
        return self.n_neurons * self.width

    @property
    def n_features(self) -> int:
        return self.n_bins * self.frame_features

    def bin_of_frame(self) -> np.ndarray:
        """(window_frames,) the bin of each frame of the window, oldest first (``bin_sizes``, or
        np.array_split's sizes)."""
        return np.repeat(np.arange(self.n_bins), self.sizes_of_bins())

    def sizes_of_bins(self) -> list[int]:
        """Frames per bin, oldest first."""
        return list(self.bin_sizes) if self.bin_sizes is not None else self._equal_sizes()

    def _equal_sizes(self) -> list[int]:
        return [len(chunk) for chunk in np.array_split(np.arange(self.window_frames), self.n_bins)]
