"""THUMOS14 from the W-TALC bundle (I3D, 2048-d joint RGB + flow), as W-TALC ships it.

``Thumos14reduced-I3D-JOINTFeatures.npy`` beside (or inside) the folder
``Thumos14reduced-Annotations/`` (``videoname.npy``, ``subset.npy``, ...,
``labels_all.npy`` and ``Ambiguous_test.txt``, which the evaluation then
ignores). Trains on ``validation``, tests on ``test``; the rest as
``configs/thumos14_i3d.py``::

  python -m jaxseg.main --config configs/thumos14_wtalc_i3d.py --workdir runs/t14w \
      --config.data.wtalc_dir=/data/W-TALC/Thumos14reduced-Annotations

The full 101-class bundle: ``--config.data.wtalc_dir=.../Thumos14-Annotations
--config.data.wtalc_features_file=Thumos14-I3D-JOINTFeatures.npy``.

Presets as ``configs/thumos14_i3d.py`` (``:jaxseg``, ``:paper``, ``:printed``).
"""

from configs import thumos14_i3d


def get_config(preset=None):
  c = thumos14_i3d.get_config(preset)
  c.data.format = "wtalc"
  c.data.feature_streams = ()
  c.data.wtalc_features_file = "Thumos14reduced-I3D-JOINTFeatures.npy"
  return c
