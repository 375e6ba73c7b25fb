"""jaxseg: weakly supervised temporal action localization from segment-level labels.

A JAX/Flax reimplementation of Ding et al., "Weakly Supervised Temporal Action
Localization with Segment-Level Labels". See README.md and docs/design.md.
"""

__version__ = "0.1.0"
