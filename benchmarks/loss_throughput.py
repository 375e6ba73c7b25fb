"""Forward+backward time and XLA temporary memory of the losses against video length.

Measures the propagation loss (eq. 13) in its four forms -- ``naive``
(``(B, T, T, N)`` broadcast), ``dense`` (materialized ``S``), ``factorized``
(never forms ``S``, gradient by autodiff) and ``fused`` (never forms ``S`` nor
any ``(B, T, D)`` temporary, hand-written gradient; the default) -- and the
full four-term loss (eq. 1, fused propagation), for ``T`` in
{256, 750, 2048, 4096, 8192} at ``B=16, D=2048, N=20``, float32, with the
configs' cosine similarity (``--similarity dot`` for ``S = f f^T`` as printed).
Gradients are taken with respect to both the features and the CAS, with the
gradient flowing through ``S`` (the most expensive case). A form whose
estimated memory would not fit is skipped and reported as such. Besides time
and XLA temporary memory, each row has XLA's estimate of the bytes the program
reads and writes (``xla_bytes_gib``; a memory-bound program's floor is that
over the device's memory bandwidth).

``--methods ... pallas`` adds the Pallas kernels of the fused form
(``jaxseg.propagation_pallas``; not in the default list): timed on a GPU only
(elsewhere they run in interpret mode, which is no speed, so the row is
skipped, except with ``--quick``, a smoke run), and each such row's note gives
its largest difference from ``fused`` (value, ``df``, ``dC``, relative to
``fused``'s largest magnitude), a check of the compiled kernels.

  python benchmarks/loss_throughput.py                 # the paper's shapes
  python benchmarks/loss_throughput.py --quick         # a small CPU smoke run
  python benchmarks/loss_throughput.py --batch 4 --lengths 2048 --dim 2048  # CPU ratio

Writes ``loss_throughput.csv``, ``loss_throughput.md`` and
``loss_throughput.png`` to ``--out`` (default ``benchmarks/out/``).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.data import device_data  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = ("naive", "dense", "factorized", "fused")
OPTIONAL_METHODS = ("pallas",)  # on request (--methods); timed on a GPU only


def make_inputs(batch: int, length: int, dim: int, classes: int, seed: int = 0) -> dict:
  """Random post-ReLU features, CAS, labels and a mask with ragged lengths."""
  rng = np.random.default_rng(seed)
  lengths = np.maximum(1, (length * rng.uniform(0.7, 1.0, batch)).astype(np.int32))
  lengths[0] = length
  mask = np.arange(length)[None, :] < lengths[:, None]
  f = np.maximum(rng.standard_normal((batch, length, dim)), 0).astype(np.float32) / np.sqrt(dim)
  cas = rng.standard_normal((batch, length, classes)).astype(np.float32)
  labels = (rng.uniform(size=(batch, classes)) < 0.1).astype(np.float32)
  labels[np.arange(batch), rng.integers(0, classes, batch)] = 1.0
  seg = ((rng.uniform(size=(batch, length, classes)) < 0.01) & mask[..., None]
         & (labels[:, None, :] > 0)).astype(np.float32)
  return {"features": f, "cas_cls": cas, "cas_loc": cas[..., ::-1].copy(), "mask": mask,
          "lengths": lengths, "video_labels": labels, "segment_labels": seg,
          "num_labeled": seg.any(-1).sum(-1).astype(np.int32),
          "weight": rng.standard_normal((classes, dim)).astype(np.float32)}


def propagation_fn(method: str, similarity: str = "cosine"):
  def fn(features, cas, mask):
    loss = lambda f, c: losses.propagation_loss(f, c, mask, method=method,
                                                grad_through_similarity=True,
                                                similarity=similarity, normalization="none")
    return jax.value_and_grad(loss, argnums=(0, 1))(features, cas)
  return fn


def total_fn(features, cas_cls, cas_loc, weight, batch, similarity: str = "cosine"):
  loss_config = config_lib.with_overrides(config_lib.base_config(), **{
      "loss.propagation_grad_through_similarity": True, "loss.propagation_method": "fused",
      "loss.propagation_similarity": similarity,
      "loss.classification_normalization": "classes", "loss.loc_classification_weight": 0.0,
      "loss.propagation_normalization": "none"}).loss.to_dict()
  def loss(f, cc, cl, w):
    out = {"features": f, "cas_cls": cc, "cas_loc": cl}
    return losses.total_loss(out, batch, weight=w, **loss_config)[0]
  return jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(features, cas_cls, cas_loc, weight)


def on_gpu() -> bool:
  return jax.default_backend() in ("gpu", "cuda", "rocm")


def agreement(compiled, ref_fn, args) -> str:
  """Largest difference of ``compiled``'s value and gradients from ``ref_fn``'s, relative."""
  got, want = compiled(*args), jax.jit(ref_fn)(*args)
  parts = []
  for name, a, b in zip(("value", "df", "dC"), jax.tree_util.tree_leaves(got),
                        jax.tree_util.tree_leaves(want)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    parts.append(f"{name} {np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30):.1e}")
  return "vs fused: " + ", ".join(parts)


def estimated_bytes(method: str, b: int, t: int, d: int, n: int) -> float:
  """A rough upper estimate of the form's working memory, to skip what cannot fit."""
  base = 4.0 * b * t * (d + n) * 4
  if method == "naive":
    return base + 4.0 * b * t * t * n * 4
  if method == "dense":
    return base + 4.0 * b * t * t * 4
  return base


def device_memory_bytes() -> float:
  """XLA's memory limit on the device; 60% of host memory where it does not say (CPU)."""
  limit = device_data.device_memory_bytes()
  if limit is not None:
    return float(limit)
  return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) * 0.6


def _failed(exc: Exception) -> str:
  """A one-line reason for a case that could not run (out of memory, mostly)."""
  text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return "skipped: out of memory"
  return f"failed: {type(exc).__name__}: {text[:120]}"


def run(batch: int, lengths, dim: int, classes: int, repeats: int, methods,
        include_total: bool = True, similarity: str = "cosine",
        partial_csv: str | None = None, interpret_ok: bool = False) -> pd.DataFrame:
  """One row per (case, T). A case that runs out of memory is recorded, not fatal.

  ``partial_csv``: rewritten after every row, so a run stopped by a time limit
  keeps what it measured. ``interpret_ok``: time ``pallas`` without a GPU too
  (interpret mode: a smoke run, not a speed).
  """
  limit = device_memory_bytes()
  rows = []
  empty = {"median_ms": np.nan, "p10_ms": np.nan, "p90_ms": np.nan, "temp_mib": np.nan,
           "xla_bytes_gib": np.nan}
  for t in lengths:
    x = make_inputs(batch, t, dim, classes)
    dev = {k: jax.device_put(v) for k, v in x.items()}
    cases = [(m, propagation_fn(m, similarity), (dev["features"], dev["cas_loc"], dev["mask"]))
             for m in methods]
    if include_total:
      b = {k: dev[k] for k in ("mask", "lengths", "video_labels", "segment_labels",
                               "num_labeled")}
      cases.append(("total (4 terms, fused)",
                    lambda f, cc, cl, w, b=b: total_fn(f, cc, cl, w, b, similarity),
                    (dev["features"], dev["cas_cls"], dev["cas_loc"], dev["weight"])))
    for name, fn, args in cases:
      method = name if name in METHODS + OPTIONAL_METHODS else "fused"
      row = {"loss": name, "B": batch, "T": t, "D": dim, "N": classes,
             "similarity": similarity}
      if method == "pallas" and not (on_gpu() or interpret_ok):
        rows.append({**row, **empty, "note": "skipped: no GPU (Pallas interpret mode is "
                                             "no speed)"})
      elif estimated_bytes(method, batch, t, dim, classes) > limit:
        rows.append({**row, **empty, "note": "skipped: would not fit"})
      else:
        try:
          compiled, temp, _ = common.compile_fn(fn, *args)
          timing = common.time_compiled(compiled, *args, repeats=repeats)
        except Exception as exc:  # pylint: disable=broad-except
          rows.append({**row, **empty, "note": _failed(exc)})
          print(f"{name:>28} T={t:5d}: {rows[-1]['note']}", flush=True)
        else:
          gib = common.bytes_accessed(compiled) / 2 ** 30
          note = ""
          if method == "pallas":
            try:
              note = agreement(compiled, propagation_fn("fused", similarity), args)
            except Exception as exc:  # pylint: disable=broad-except
              note = f"no check against fused: {_failed(exc)}"
            if not on_gpu():
              note += "; interpret mode (no GPU): not a speed"
          rows.append({**row, **timing, "temp_mib": temp / 2 ** 20, "xla_bytes_gib": gib,
                       "note": note})
          print(f"{name:>28} T={t:5d}: {timing['median_ms']:9.3f} ms  "
                f"temp {temp / 2 ** 20:10.1f} MiB  XLA bytes {gib:8.3f} GiB", flush=True)
          del compiled
      if partial_csv:
        os.makedirs(os.path.dirname(partial_csv) or ".", exist_ok=True)
        pd.DataFrame(rows).to_csv(partial_csv, index=False)
  return pd.DataFrame(rows)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true", help="small shapes for a CPU smoke run")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--lengths", type=int, nargs="+", default=[256, 750, 2048, 4096, 8192])
  p.add_argument("--dim", type=int, default=2048)
  p.add_argument("--classes", type=int, default=20)
  p.add_argument("--repeats", type=int, default=10)
  p.add_argument("--methods", nargs="+", default=list(METHODS),
                 choices=METHODS + OPTIONAL_METHODS,
                 help="forms of eq. 13; 'pallas' (not a default) is timed on a GPU only")
  p.add_argument("--no-total", action="store_true", help="skip the four-term loss")
  p.add_argument("--similarity", default="cosine", choices=config_lib.PROPAGATION_SIMILARITIES,
                 help="S of eq. 13: cosine (the configs' default) or dot (as printed)")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.lengths, args.dim, args.repeats = 2, [64, 256], 32, 3
  df = run(args.batch, args.lengths, args.dim, args.classes, args.repeats, args.methods,
           include_total=not args.no_total, similarity=args.similarity,
           partial_csv=os.path.join(args.out, "loss_throughput.partial.csv"),
           interpret_ok=args.quick)
  notes = []
  for base, others in (("factorized", ("naive", "dense")),
                       ("fused", ("naive", "dense", "factorized", "pallas"))):
    ref = df[df["loss"] == base].set_index("T")["median_ms"]
    for m in others:
      other = df[df["loss"] == m].set_index("T")["median_ms"]
      ratio = (other / ref).dropna()
      if len(ratio):
        notes.append(f"- {m} / {base} time ratio: " + ", ".join(
            f"T={t}: {r:.1f}x" for t, r in ratio.items()))
  paths = common.write_reports(df, args.out, "loss_throughput",
                               "Loss forward+backward throughput", notes)
  os.remove(os.path.join(args.out, "loss_throughput.partial.csv"))  # complete now
  plot_df = df.dropna(subset=["median_ms"])
  paths.append(common.plot_scaling(plot_df, os.path.join(args.out, "loss_throughput.png"),
                                   x="T", series="loss",
                                   title=f"B={args.batch}, D={args.dim}, N={args.classes}"))
  print("\n".join(notes))
  print("wrote", ", ".join(path for path in paths if path))
  return df


if __name__ == "__main__":
  main()
