"""ActivityNet 1.2 with I3D features, the paper as printed:
``configs/activitynet12_i3d.py`` plus every printed choice where jaxseg departs
from the print (``config.paper_as_printed``; docs/paper-notes.md) and
two-segment labels::

  python -m jaxseg.main --config configs/activitynet12_i3d_paper.py --workdir runs/anet12_paper \
      --config.data.annotation_path=/data/anet12/gt.json \
      --config.data.features_dir=/data/anet12/features
"""

from configs import activitynet12_i3d
from jaxseg import config as config_lib


def get_config():
  return config_lib.paper_as_printed(activitynet12_i3d.get_config())
