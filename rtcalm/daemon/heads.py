"""Decoding heads in the daemon: per-session readouts of behaviour from the frames the model reads and
its hidden state.

A head (fitted offline, ``rtcalm fit-head``) is tied to one session's neurons (``n_neurons``) and, when
it reads the backbone, to the serving model's ``d_model``. Kinds (:mod:`rtcalm.model.heads`): the EMA
head (file version 1), whose state is an EMA pool (N, d_model), and the time-resolved head (versions 2
and 3; features raw, backbone or both), whose state is a ring buffer of the last ``window_frames``
frames' contributions to its time bins. The ``load_head`` control command reads one for a running
session (:func:`read_head` validates it completely before anything changes); its state is allocated
once at load (:func:`rtcalm.model.heads.open_stream`). Per frame, the pipeline gives every frame the
model consumes to the session's heads, as (its hidden state (N, d_model), its ΔF/F as the daemon
received it (N,), NaN = missing):

- a frame that gets a prediction: :meth:`SessionHeads.decode`, i.e. ``stream.step(hidden, dff)`` per
  head (the state takes the frame, then the linear readout), merged into one map, the prediction's
  ``decoded``;
- a frame without its own prediction (folded into a catch-up batch, or a filled-in gap):
  :meth:`SessionHeads.absorb`, ``stream.absorb(hidden, dff)``: the same state update without the
  readout, so the state is exactly the one a frame-by-frame run would have.

A fresh stream of the same neuron count keeps its heads with zeroed states; a new neuron count, or a
hot-swapped model (any: a head reads the hidden state of the backbone it was fitted on, or was chosen
beside it), drops them (the pipeline counts and logs it).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from rtcalm.model.heads import (
    FEATURE_KINDS,
    DecodingHead,
    HeadError,
    TimeResolvedHead,
    load_head,
    open_stream,
)
from rtcalm.model.heads.files import HEAD_VERSIONS, tensor_bytes
from rtcalm.protocol import ProtocolError

MAX_HEADS_PER_SESSION = 8
MAX_HEAD_JSON_BYTES = 1 << 20  # a head's JSON is a few hundred bytes; this only bounds a wrong file
HEAD_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_WINDOW_FRAMES = 1 << 12  # a time-resolved head's window (and bins, components): a bound on a wrong file
PROBABILITIES_SUFFIX = "_probabilities"  # a classification head's second output key (DecodingHead.step)


def read_head(path: str, *, n_neurons: int, d_model: int) -> DecodingHead | TimeResolvedHead:
    """Load and check the head at ``path`` (its ``.json``; the ``.safetensors`` beside it) for a session of
    ``n_neurons`` neurons on a model of width ``d_model``. Raises ProtocolError: ``head_not_found``
    (either file missing), ``head_invalid`` (not an rtcalm head, corrupt or non-finite weights, a bad
    name), ``head_mismatch`` (fitted for another neuron count or model width). Sizes are checked before
    the head's tensors are allocated."""
    json_path = Path(path)
    weights_path = json_path.with_suffix(".safetensors")
    if not json_path.is_file():
        raise ProtocolError("head_not_found", f"no head file {str(json_path)!r} on the daemon's machine (give the "
                                              "head's .json, as written by DecodingHead.save)")
    if json_path.suffix != ".json":
        raise ProtocolError("head_invalid", f"{str(json_path)!r}: give the head's .json file")
    if not weights_path.is_file():
        raise ProtocolError("head_not_found", f"{str(json_path)!r}: its weights {weights_path.name!r} are missing")
    config = _head_config(json_path)
    checks = [("n_neurons", n_neurons, "the session has")]
    if config.get("features", "backbone") != "raw":  # a raw head reads no hidden state
        checks.append(("d_model", d_model, "the serving model has"))
    for key, expected, what in checks:
        if config[key] != expected:
            raise ProtocolError("head_mismatch", f"{str(json_path)!r}: head {config['name']!r} was fitted for "
                                                 f"{key} = {config[key]}, {what} {expected}")
    needed = tensor_bytes(config, n_neurons, config["d_model"])
    if weights_path.stat().st_size < needed:
        raise ProtocolError("head_invalid", f"{weights_path.name!r} is {weights_path.stat().st_size} bytes, too "
                                            f"small for the {needed} bytes of weights its config describes")
    try:
        head = load_head(json_path)
    except HeadError as error:
        raise ProtocolError("head_invalid", str(error)) from None
    if not all(bool(torch.isfinite(p).all()) for p in head.parameters()):
        raise ProtocolError("head_invalid", f"{str(json_path)!r}: the head's weights hold NaN or Inf")
    # Class values go out as floats, as docs/protocol.md says (JSON may have written 0, 45, ... as ints).
    head.config.classes = [float(value) for value in head.config.classes]
    return head


def _head_config(json_path: Path) -> dict:
    """The checked ``config`` map of a head's JSON (ProtocolError 'head_invalid' otherwise)."""
    def invalid(reason: str) -> ProtocolError:
        return ProtocolError("head_invalid", f"{str(json_path)!r}: {reason}")

    if json_path.stat().st_size > MAX_HEAD_JSON_BYTES:
        raise invalid(f"over {MAX_HEAD_JSON_BYTES} bytes, not a head's JSON")
    try:
        text = json_path.read_bytes()
    except OSError as exc:
        raise invalid(f"cannot read it ({exc})") from None
    try:
        document = json.loads(text)
    except ValueError as exc:  # including UnicodeDecodeError
        raise invalid(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != "rtcalm-head" or \
            document.get("version") not in HEAD_VERSIONS:
        raise invalid("not an rtcalm head (format 'rtcalm-head', version 1, 2, 3 or 4)")
    config = document.get("config")
    if not isinstance(config, dict):
        raise invalid("no 'config' map")
    version = document["version"]
    if version >= 2 and config.get("pooling") != "time_bins":
        raise invalid(f"a version {version} head needs pooling 'time_bins', got {config.get('pooling')!r}")
    if version >= 3 and config.get("features") not in FEATURE_KINDS:
        raise invalid(f"features must be one of {', '.join(FEATURE_KINDS)}, got {config.get('features')!r}")
    name = config.get("name")
    if type(name) is not str or not HEAD_NAME_PATTERN.fullmatch(name):
        raise invalid(f"head name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    for key in ("n_neurons", "d_model"):
        if type(config.get(key)) is not int or config[key] < 1:
            raise invalid(f"{key} must be a positive integer, got {config.get(key)!r}")
    if version >= 2:
        for key in ("window_frames", "n_bins", "components"):
            lowest = 0 if key == "components" and config.get("features") == "raw" else 1
            if type(config.get(key)) is not int or not lowest <= config[key] <= MAX_WINDOW_FRAMES:
                raise invalid(f"{key} must be an integer from {lowest} to {MAX_WINDOW_FRAMES}, got {config.get(key)!r}")
    else:
        pool_frames = config.get("pool_frames")
        if type(pool_frames) not in (int, float) or not (math.isfinite(pool_frames) and pool_frames >= 1):
            raise invalid(f"pool_frames must be a finite number >= 1, got {pool_frames!r}")
    classes = config.get("classes", [])
    if not isinstance(classes, list) or not all(type(c) in (int, float) and math.isfinite(c) for c in classes):
        raise invalid("classes must be a list of finite numbers")
    return config


class LoadedHead:
    """A head serving one session, with its stream (:func:`rtcalm.model.heads.open_stream`: state
    allocated once, zeroed by a fresh stream): the EMA pool of a DecodingHead or the ring buffer of a
    TimeResolvedHead."""

    def __init__(self, head: DecodingHead | TimeResolvedHead, path: str):
        self.head = head
        self.name = head.config.name
        self.stream = open_stream(head)
        self.path = path

    @property
    def frames(self) -> int:
        """Frames taken since the head was loaded or its state last zeroed."""
        return self.stream.frames

    def reset(self) -> None:
        self.stream.reset()

    def output_names(self) -> set[str]:
        return _output_names(self.head)

    def describe(self) -> dict:
        config = self.head.config
        if isinstance(self.head, TimeResolvedHead):
            pooling = {"pooling": "time_bins", "features": config.features, "window_frames": config.window_frames,
                       "n_bins": config.n_bins, "components": config.components}
        else:
            pooling = {"pool_frames": float(config.pool_frames)}
        return {"name": self.name, "kind": config.kind, **pooling, "classes": list(config.classes),
                "path": self.path, "pooled_frames": self.frames}


class SessionHeads:
    """The decoding heads of one session by name, in load order (the order of their outputs)."""

    def __init__(self):
        self._heads: dict[str, LoadedHead] = {}

    def __len__(self) -> int:
        return len(self._heads)

    # --- per frame (the pipeline) ---
    def absorb(self, hidden: np.ndarray, dff: np.ndarray) -> None:
        """A consumed frame without its own prediction: every head's state takes its hidden state
        (N, d_model) and its ΔF/F (N,), exactly as ``step`` would, without the readout."""
        for loaded in self._heads.values():
            loaded.stream.absorb(hidden, dff)

    def decode(self, hidden: np.ndarray, dff: np.ndarray) -> dict:
        """The answered frame: ``stream.step(hidden, dff)`` per head; their outputs merged (name -> value)."""
        decoded = {}
        for loaded in self._heads.values():
            decoded.update(loaded.stream.step(hidden, dff))
        return decoded

    def reset_pools(self) -> None:
        """A fresh stream: every head's state zeroed (EMA pools and ring buffers)."""
        for loaded in self._heads.values():
            loaded.reset()

    # --- load / unload (control commands, between batches) ---
    def check_room(self, head: DecodingHead | TimeResolvedHead) -> None:
        """ProtocolError unless ``head`` can join: at most MAX_HEADS_PER_SESSION heads ('too_large'), and
        no output name another head already publishes ('head_conflict'). A head of the same name is
        the one it replaces."""
        name = head.config.name
        others = [loaded for loaded in self._heads.values() if loaded.name != name]
        if len(others) >= MAX_HEADS_PER_SESSION:
            raise ProtocolError("too_large", f"the session already has {len(others)} decoding heads (at most "
                                             f"{MAX_HEADS_PER_SESSION}); unload one first")
        outputs = _output_names(head)
        for loaded in others:
            clash = outputs & loaded.output_names()
            if clash:
                raise ProtocolError("head_conflict", f"head {name!r} would publish {sorted(clash)}, which head "
                                                     f"{loaded.name!r} already publishes; rename one of them")

    def install(self, loaded: LoadedHead) -> bool:
        """Add ``loaded``, or replace the head of its name (in place: its outputs keep their position).
        Returns whether one was replaced."""
        replaced = loaded.name in self._heads
        self._heads[loaded.name] = loaded
        return replaced

    def remove(self, name: str) -> LoadedHead:
        """ProtocolError('unknown_head') if the session has no head ``name``."""
        loaded = self._heads.pop(name, None)
        if loaded is None:
            loaded_names = ", ".join(self._heads) or "none"
            raise ProtocolError("unknown_head", f"no decoding head {name!r} is loaded (loaded: {loaded_names})")
        return loaded

    def names(self) -> list[str]:
        return list(self._heads)

    def classes(self) -> dict[str, list[float]]:
        """Each head's classes by name ([] for a regression head): what trigger rules read."""
        return {name: list(loaded.head.config.classes) for name, loaded in self._heads.items()}

    def describe(self) -> list[dict]:
        return [loaded.describe() for loaded in self._heads.values()]


def _output_names(head: DecodingHead | TimeResolvedHead) -> set[str]:
    name = head.config.name
    return {name, name + PROBABILITIES_SUFFIX} if head.config.kind == "classification" else {name}
