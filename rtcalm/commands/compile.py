"""``rtcalm compile``: export the model's incremental step to ONNX or build a TensorRT engine, check it
against the torch reference, and write it with a sidecar naming the model it was built from."""

from __future__ import annotations

import argparse
import sys

from rtcalm.commands.arguments import add_model_argument


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compile", help="compile the model step for ONNX Runtime or TensorRT (used by rtcalm serve --backend)",
        description="Export the incremental CalM step (state as explicit inputs/outputs) to ONNX, or build a "
                    "TensorRT engine from it, run it side by side with the torch reference over hundreds of "
                    "steps at a few neuron counts, and write it with a JSON sidecar (model hash, neuron range, "
                    "precision, measured agreement). Default place: <checkpoint>/compiled/"
                    "<backend>-n<MIN>-<MAX>[-fp16].<onnx|plan>. Nothing is written if the check fails. "
                    "See docs/backends.md.")
    add_model_argument(parser)
    parser.add_argument("--backend", required=True, choices=["onnx", "tensorrt"],
                        help="onnx: ONNX Runtime (CPU); tensorrt: an engine for this machine's NVIDIA GPU")
    neurons = parser.add_mutually_exclusive_group()
    neurons.add_argument("--neurons", metavar="N", help="exactly N neurons (fixed shapes)")
    neurons.add_argument("--neurons-range", metavar="MIN:MAX",
                         help="any neuron count in [MIN, MAX] (dynamic axis / TensorRT optimisation profile; "
                              "default 1:65536)")
    parser.add_argument("--fp16", action="store_true",
                        help="TensorRT: allow half precision (kept only if it passes the accuracy check)")
    parser.add_argument("--out", metavar="PATH", help="artifact file to write (default: next to the checkpoint); "
                                                      "the sidecar goes to PATH.json")
    parser.add_argument("--validation-steps", type=int, default=200, metavar="K",
                        help="incremental steps compared with torch per neuron count (default 200)")
    parser.add_argument("--tolerance", type=float, metavar="X",
                        help="max |forecast difference| allowed (default 1e-4, with --fp16 5e-2)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import logging

    import torch

    from rtcalm.engine.artifact import NeuronRange, parse_neuron_count, parse_neuron_range
    from rtcalm.engine.build import compile_artifact

    logging.basicConfig(level=logging.INFO, format="rtcalm compile: %(message)s")
    # the torch reference that validates the artifact is small; on a machine shared with other work a
    # second intra-op thread that gets descheduled stalls every small matmul
    torch.set_num_threads(1)
    if args.neurons is not None:
        neurons = NeuronRange.exactly(parse_neuron_count(args.neurons))
    elif args.neurons_range is not None:
        neurons = parse_neuron_range(args.neurons_range)
    else:
        neurons = None
    path, sidecar = compile_artifact(args.model, args.backend, neurons, fp16=args.fp16, out=args.out,
                                     validation_steps=args.validation_steps, tolerance=args.tolerance)
    rng = sidecar["neuron_range"]
    print(f"wrote {path} ({path.stat().st_size:,} bytes) and {path.name}.json", file=sys.stderr)
    print(f"  model {sidecar['model']['version']}, {sidecar['backend']} {sidecar['precision']}, "
          f"{rng.describe()}", file=sys.stderr)
    for result in sidecar["validation"]["results"]:
        print(f"  N={result['n_neurons']}: {result['steps']} steps, max |forecast - torch| "
              f"{result['max_abs_error']:.2e} (tolerance {result['tolerance']:g}), {result['code_flip_steps']} "
              "near-tie code flips", file=sys.stderr)
    print(path)
    return 0
