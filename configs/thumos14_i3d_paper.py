"""THUMOS14 with I3D features, the paper as printed: ``configs/thumos14_i3d.py``
plus every printed choice where jaxseg departs from the print
(``config.paper_as_printed``; docs/paper-notes.md, "The paper as printed", lists
each field and the equation it restores) and two-segment labels, the model of
the paper's Table 2 (47.4 avg, 31.6 mAP@0.5)::

  python -m jaxseg.main --config configs/thumos14_i3d_paper.py --workdir runs/thumos14_paper \
      --config.data.annotation_path=/data/thumos14/gt.json \
      --config.data.features_dir=/data/thumos14/features

On the synthetic data (no download), with the synthetic config's data and
training settings::

  python -m jaxseg.main --config configs/thumos14_i3d_paper.py:synthetic --workdir runs/paper_syn

and at the size of ``configs/synthetic_small.py`` (the README's comparison)::

  python -m jaxseg.main --config configs/thumos14_i3d_paper.py:synthetic_small \
      --workdir runs/paper_small --seeds 3
"""

from configs import synthetic as synthetic_config
from configs import synthetic_small
from configs import thumos14_i3d
from jaxseg import config as config_lib


def get_config(arg: str | None = None):
  if arg in ("synthetic", "synthetic_small"):
    c = (synthetic_config if arg == "synthetic" else synthetic_small).get_config()
    c.loss.gamma = 0.02  # the printed weight (configs/synthetic.py lowers it)
  elif arg:
    raise ValueError(f"configs/thumos14_i3d_paper.py: unknown argument {arg!r} "
                     "(synthetic, synthetic_small)")
  else:
    c = thumos14_i3d.get_config()
  return config_lib.paper_as_printed(c)
