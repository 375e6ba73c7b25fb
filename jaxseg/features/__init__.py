"""Two-stream I3D feature extraction: video files to ``rgb/<vid>.npy`` + ``flow/<vid>.npy``.

* :mod:`jaxseg.features.i3d`: the Inception-v1 I3D network (Flax).
* :mod:`jaxseg.features.weights`: the converted ``.npz`` weights (names, layouts,
  checks); :mod:`jaxseg.features.convert` makes them from a pytorch-i3d state dict.
* :mod:`jaxseg.features.video`: decoding, 25 fps resampling, resizing and
  cropping, TV-L1 optical flow, 16-frame snippets.
* :mod:`jaxseg.features.errors`: the named errors.

``python -m jaxseg.extract`` runs it all; see ``docs/feature-extraction.md``.
"""
