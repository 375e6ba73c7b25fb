"""ActivityNet 1.3 with I3D features (2048-d), the paper's Table 4 settings.

``activity_net.v1-3.min.json`` as released (``{"version", "taxonomy",
"database": {vid: {"subset": "training" | "validation" | "testing",
"duration", "annotations": [{"segment", "label"}], "url", "resolution"}}}``;
200 classes; ``testing`` has no annotations and is not used) and features
``(T, 2048)`` in any layout (``features/<vid>.npy``, per subset, or per stream
with ``data.feature_streams``). Trains on "training", tests on "validation"
at tIoU 0.5:0.05:0.95, as ``configs/activitynet12_i3d.py``::

  python -m jaxseg.main --config configs/activitynet13_i3d.py --workdir runs/anet13 \
      --config.data.annotation_path=/data/anet13/activity_net.v1-3.min.json \
      --config.data.features_dir=/data/anet13/features

Presets as ``configs/activitynet12_i3d.py`` (``:jaxseg``, ``:paper``, ``:printed``).
"""

from configs import activitynet12_i3d


def get_config(preset=None):
  return activitynet12_i3d.get_config(preset)
