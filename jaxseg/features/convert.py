"""Converts a pytorch-i3d checkpoint to the ``.npz`` that extraction reads.

  python -m jaxseg.features.convert --torch rgb_imagenet.pt --stream rgb --out rgb_i3d.npz
  python -m jaxseg.features.convert --torch flow_imagenet.pt --stream flow --out flow_i3d.npz

Needs PyTorch, only here (``pip install torch``; it is not in requirements.txt):
the checkpoint is read with ``torch.load(weights_only=True)`` on the CPU, every
tensor is mapped and checked (:func:`jaxseg.features.weights.torch_to_flax`),
and the result is written without pickle. Exit status 2 on a bad checkpoint,
with the error's name and the tensor it concerns.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from jaxseg.features import weights as weights_lib
from jaxseg.features.errors import WeightsError


def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit(
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
  _, info = weights_lib.load_weights(out_path, stream=stream)
  return info


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m jaxseg.features.convert",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch", required=True, help="pytorch-i3d state dict (.pt)")
  parser.add_argument("--stream", required=True, choices=sorted(weights_lib.STREAM_CHANNELS))
  parser.add_argument("--out", required=True, help="the .npz to write")
  parser.add_argument("--width-multiplier", type=float, default=1.0,
                      help="channel scale of the checkpoint's network (1.0: I3D)")
  args = parser.parse_args(argv)
  try:
    info = convert(args.torch, args.stream, args.out, args.width_multiplier)
  except WeightsError as e:
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.out}: I3D {info.stream} stream, {info.feature_dim}-d features")
  return 0


if __name__ == "__main__":
  sys.exit(main())
