"""Named errors of feature extraction.

Every error raised for a bad video or a bad weight file is an
:class:`ExtractionError`; ``python -m jaxseg.extract`` records it against the
video (or stops before the first video for a bad weight file) and exits with
status 2.
"""


class ExtractionError(Exception):
  """Base class of every feature-extraction error."""


class VideoError(ExtractionError):
  """A video that cannot be turned into snippets."""


class UnreadableVideoError(VideoError):
  """The file cannot be opened, demuxed or decoded, or holds no video frames."""


class EmptyVideoError(UnreadableVideoError):
  """The file is zero bytes long."""


class VideoTooShortError(VideoError):
  """Fewer than 16 frames at 25 fps: not one whole snippet."""


class VideoTimestampError(VideoError):
  """Frames without timestamps, or timestamps that do not increase.

  Variable-frame-rate video is not an error: frames are resampled to 25 fps by
  their timestamps. Only timestamps that make that impossible are.
  """


class UnsafeVideoIdError(ExtractionError):
  """A file stem that is not a safe file name (it becomes ``<vid>.npy``)."""


class DuplicateVideoIdError(ExtractionError):
  """Two input files with the same stem (e.g. ``a.mp4`` and ``a.avi``)."""


class NonFiniteFeaturesError(ExtractionError):
  """The network produced NaN or inf for a video (nothing is written)."""


class WeightsError(ExtractionError):
  """A weight file that cannot be used."""


class MissingWeightError(WeightsError):
  """An expected tensor is not in the weight file."""


class UnexpectedWeightError(WeightsError):
  """The weight file holds a tensor the network does not have."""


class WeightShapeError(WeightsError):
  """A tensor of the wrong shape; the message names it and both shapes."""


class UnsafePickleError(WeightsError):
  """A pickled checkpoint asks for something the restricted unpickler does not
  admit (any global but NumPy's array reconstruction, a persistent id, an
  object dtype); refused before anything is called."""


class PickleContentError(WeightsError):
  """A pickled checkpoint that loads but holds something other than dicts with
  string keys, lists, tuples and numeric NumPy arrays."""


class NoClassifierError(WeightsError):
  """A weight file without the Kinetics classifier (``classifier/*`` keys)."""
