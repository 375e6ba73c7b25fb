"""The same train step written the straightforward way in PyTorch, as a reference.

What a user would otherwise pick: the peer WTAL code bases (W-TALC, BaSNet,
LACP) run the network on the padded batch, then loop over the videos of the
batch in Python to compute each video's losses. Here the four terms of eq. 1
with jaxseg's default readings (``configs``' base config): top-k MIL with
``k = max(1, l // 2Q)`` and W-TALC's label normalization (eq. 2-4, on ``C_cls``
as in the paper's network that ``train_step.py`` times; ``--check`` adds it on
``C_loc`` with the base config's ``loss.loc_classification_weight``, over
``C_cls``'s ``k``: a base config with ``loss.loc_classification_topk_ratio > 0``
is not mirrored here), the
partial segment loss (eq. 5-6), the A-Softmax sphere loss over the
attention-pooled class features (eq. 7-10, ``m = 4``, median attention
threshold), and the propagation loss (eq. 13) written as printed: the dense
``l x l`` cosine similarity times the ``l x l x N`` squared CAS differences,
averaged over the pairs (no gradient through ``S``, as jaxseg's default).
Adam with L2 weight decay 5e-4, lr 1e-4, as ``torch.optim.Adam``.

  python benchmarks/torch_reference.py                    # B=16, T=750, D=2048, N=20
  python benchmarks/torch_reference.py --quick            # small CPU smoke run
  python benchmarks/torch_reference.py --check            # loss equals jaxseg's total_loss

``--check`` computes eq. 1 of one batch with both implementations from the
same network outputs, in float64 on the CPU, and fails if they differ: the
reference times the same arithmetic, not a different method.

Writes ``torch_reference.csv`` / ``.md`` to ``--out``; with ``--jax-csv``
(``train_step.csv`` of the same run) adds the ratio to jaxseg's step.
Needs PyTorch (not a jaxseg requirement).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover
  sys.exit("benchmarks/torch_reference.py needs PyTorch (pip install torch)")

ALPHA, BETA, GAMMA, MARGIN = 0.1, 1e-4, 0.02, 4


class Net(nn.Module):
  """Paper Fig. 3: FC D -> D + ReLU + dropout, two FC heads, the sphere weight W."""

  def __init__(self, dim: int, classes: int, dropout: float = 0.7):
    super().__init__()
    self.embedding = nn.Linear(dim, dim)
    self.drop = nn.Dropout(dropout)
    self.cls_head = nn.Linear(dim, classes)
    self.loc_head = nn.Linear(dim, classes)
    self.sphere_weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))

  def forward(self, x):
    f = self.drop(torch.relu(self.embedding(x)))
    return f, self.cls_head(f), self.loc_head(f)


def psi(cos_t: torch.Tensor, m: int) -> torch.Tensor:
  """SphereFace ``(-1)^k cos(m theta) - 2k``."""
  theta = torch.acos(cos_t.clamp(-1 + 1e-7, 1 - 1e-7))
  k = torch.floor(m * theta / math.pi)
  return torch.where(k % 2 == 0, 1.0, -1.0) * torch.cos(m * theta) - 2 * k


def video_loss(f, cas_cls, cas_loc, y, u, w, loc_weight):
  """The four terms of one video, unpadded: ``f (l, D)``, CAS ``(l, N)``, ``y (N,)``, ``u (l, N)``;
  ``loc_weight`` times eq. 2-4 on ``C_loc`` joins the classification term."""
  length = f.shape[0]
  q = int(u.any(dim=1).sum())
  k = max(1, length // (2 * q)) if q > 0 else max(1, int(length // 8))
  s = torch.topk(cas_cls, k, dim=0).values.mean(dim=0)
  cls = -(y / y.sum() * torch.log_softmax(s, dim=0)).sum()
  if loc_weight:
    s_loc = torch.topk(cas_loc, k, dim=0).values.mean(dim=0)
    cls = cls - loc_weight * (y / y.sum() * torch.log_softmax(s_loc, dim=0)).sum()
  log_a = torch.log_softmax(cas_loc, dim=0)
  seg = -(u * log_a).sum()
  a = log_a.exp()
  tau = torch.quantile(a, 0.5, dim=0).detach()
  att = a * (a >= tau).to(a.dtype)
  big_f = att.t() @ f  # (N, D)
  w_hat = torch.nn.functional.normalize(w, dim=1)
  logits = big_f @ w_hat.t()  # (N, N): row n, logit of class j
  norm = big_f.norm(dim=1)
  cos_t = logits.diagonal() / norm.clamp_min(1e-12)
  target = norm * psi(cos_t, MARGIN)
  eye = torch.eye(logits.shape[0], dtype=torch.bool, device=f.device)
  logits = torch.where(eye, target[:, None], logits)
  per_class = torch.logsumexp(logits, dim=1) - target
  sph = (y * per_class)[y > 0].sum()
  fn = torch.nn.functional.normalize(f, dim=1).detach()
  sim = fn @ fn.t()  # (l, l)
  diff = (cas_loc[:, None, :] - cas_loc[None, :, :]) ** 2  # (l, l, N)
  prop = (sim[..., None] * diff).sum() / length ** 2
  return cls + ALPHA * seg + BETA * sph + GAMMA * prop


def batch_loss(net, x, lengths, y, u, loc_weight=0.0):
  f, cas_cls, cas_loc = net(x)
  total = 0.0
  for i in range(x.shape[0]):  # the peers' Python loop over the videos
    n = int(lengths[i])
    total = total + video_loss(f[i, :n], cas_cls[i, :n], cas_loc[i, :n], y[i], u[i, :n],
                               net.sphere_weight, loc_weight)
  return total / x.shape[0]


def make_batch(batch, length, dim, classes, device, dtype=torch.float32, seed=0):
  """The inputs of ``loss_throughput.make_inputs`` (same ragged lengths and labels)."""
  from benchmarks import loss_throughput  # pylint: disable=g-import-not-at-top
  b = loss_throughput.make_inputs(batch, length, dim, classes, seed)
  to = lambda a, dt=dtype: torch.as_tensor(np.asarray(a), device=device).to(dt)
  return b, (to(b["features"] * np.sqrt(dim)), b["lengths"].tolist(), to(b["video_labels"]),
             to(b["segment_labels"]))


def measure(batch, length, dim, classes, repeats, device, precision):
  torch.manual_seed(0)
  net = Net(dim, classes).to(device)
  opt = torch.optim.Adam(net.parameters(), lr=1e-4, weight_decay=5e-4)
  _, (x, lengths, y, u) = make_batch(batch, length, dim, classes, device)
  autocast = precision == "bfloat16"
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                        enabled=autocast):
      loss = batch_loss(net, x, lengths, y, u)
    loss.backward()
    opt.step()
    return loss

  for _ in range(3):
    step()
  sync()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t0)
  ms = np.asarray(times) * 1e3
  return {"impl": "pytorch, per-video loop, dense l x l x N", "precision": precision,
          "B": batch, "T": length, "D": dim, "N": classes, "median_ms": float(np.median(ms)),
          "p10_ms": float(np.percentile(ms, 10)), "p90_ms": float(np.percentile(ms, 90)),
          "repeats": repeats, "torch": torch.__version__,
          "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}


def check(batch=3, length=40, dim=16, classes=5) -> float:
  """Both implementations' eq. 1 on the same network outputs, float64; returns |diff|."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", True)
  from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxseg import losses  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  net = Net(dim, classes, dropout=0.0).double().eval()
  b, (x, lengths, y, u) = make_batch(batch, length, dim, classes, "cpu", torch.float64, seed=3)
  c = config_lib.base_config()
  with torch.no_grad():
    ref = float(batch_loss(net, x, lengths, y, u, c.loss.loc_classification_weight))
    f, cas_cls, cas_loc = net(x)
  kwargs = c.loss.to_dict()
  mask = b["mask"][..., None]
  out = {"features": np.where(mask, f.numpy(), 0.0), "cas_cls": np.where(mask, cas_cls.numpy(), 0.0),
         "cas_loc": np.where(mask, cas_loc.numpy(), 0.0)}
  batch_dict = {k: b[k] for k in ("mask", "lengths", "video_labels", "segment_labels",
                                  "num_labeled")}
  ours, _ = losses.total_loss(out, batch_dict, weight=net.sphere_weight.detach().numpy(),
                              **kwargs)
  diff = abs(float(ours) - ref)
  print(f"jaxseg total_loss {float(ours):.10f}, pytorch reference {ref:.10f}, |diff| {diff:.2e}")
  return diff


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--check", action="store_true")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--length", type=int, default=750)
  p.add_argument("--dim", type=int, default=2048)
  p.add_argument("--classes", type=int, default=20)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
  p.add_argument("--jax-csv", default="", help="train_step.csv of the same run: adds ratios")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  args = p.parse_args(argv)
  if args.check:
    diff = check()
    if not diff < 1e-9:
      sys.exit(f"the PyTorch reference and jaxseg disagree by {diff:.3g}")
    return None
  if args.quick:
    args.batch, args.length, args.dim, args.repeats = 2, 64, 32, 3
  device = "cuda" if torch.cuda.is_available() else "cpu"
  # TF32 for float32 matmuls, as XLA's default precision on the GPU.
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  rows = []
  for prec in args.precisions:
    r = measure(args.batch, args.length, args.dim, args.classes, args.repeats, device, prec)
    print(f"pytorch {prec:>8} T={args.length}: {r['median_ms']:.3f} ms/step", flush=True)
    rows.append(r)
  df = pd.DataFrame(rows)
  notes = []
  if args.jax_csv and os.path.exists(args.jax_csv):
    jx = pd.read_csv(args.jax_csv)
    jx = jx[jx["T"] == args.length]
    for r in df.itertuples():
      same = jx[jx["compute_dtype"] == r.precision]
      for j in same.itertuples():
        line = (f"- {r.precision}: pytorch {r.median_ms:.3f} ms / jaxseg {j.method} "
                f"{j.median_ms:.3f} ms = {r.median_ms / j.median_ms:.1f}x")
        notes.append(line)
        print(line)
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  print("wrote", ", ".join(common.write_reports(df, args.out, "torch_reference",
                                                "PyTorch reference train step", notes)))
  return df


if __name__ == "__main__":
  main()
