"""The data layer: data model, readers, segment-level labels, synthetic data, batching.

``docs/data-formats.md`` shows how to point the tool at real features;
``docs/synthetic-data.md`` describes the embedded synthetic dataset.
"""

from jaxseg.data.batching import TrainLoader, bucket_length, eval_batches, pad_video
from jaxseg.data.labels import (SegmentLabels, instance_segment_span, load_segment_labels,
                                sample_segment_labels, save_segment_labels)
from jaxseg.data.points import read_point_labels
from jaxseg.data.readers import load_dataset, read_activitynet, segment_labels
from jaxseg.data.synthetic import generate_synthetic
from jaxseg.data.video import DataError, Dataset, Instance, Video
from jaxseg.data.wtalc import read_wtalc

__all__ = [
    "DataError", "Dataset", "Instance", "SegmentLabels", "TrainLoader", "Video",
    "bucket_length", "eval_batches", "generate_synthetic", "instance_segment_span",
    "load_dataset", "load_segment_labels", "pad_video", "read_activitynet",
    "read_point_labels", "read_wtalc", "sample_segment_labels", "save_segment_labels",
    "segment_labels",
]
