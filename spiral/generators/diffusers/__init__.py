"""Image-to-video generators backed by diffusers pipelines (extra ``spiral-video[diffusers]``), one module per
model family:

- :mod:`~spiral.generators.diffusers.base`: what every adapter shares (loading, options, sizes, conditioning,
  output, flow-access glue) and the generic ``diffusers`` backend (:class:`DiffusersI2V`);
- :mod:`~spiral.generators.diffusers.wan`: Wan 2.1 I2V (``wan21-i2v``) and Wan 2.2 TI2V (``wan22-ti2v``);
- :mod:`~spiral.generators.diffusers.ltx`: LTX-Video I2V (``ltx-i2v``);
- :mod:`~spiral.generators.diffusers.cogvideox`: CogVideoX I2V (``cogvideox-i2v``);
- :mod:`~spiral.generators.diffusers.testing`: tiny random-weight pipelines built in code (tests, benchmarks).

Importing this package does not import diffusers; the adapters do when they are built.
"""

from spiral.generators.diffusers.base import (
    INSTALL_HINT,
    DiffusersI2V,
    FlowAccess,
    FlowInputs,
    ModelSize,
    crop_box,
    require_diffusers,
    snap_frames,
    snap_side,
    to_uint8,
)
from spiral.generators.diffusers.cogvideox import CogVideoXI2VAdapter
from spiral.generators.diffusers.ltx import LTXI2VAdapter
from spiral.generators.diffusers.wan import Wan22TI2VAdapter, WanI2VAdapter

__all__ = [
    "INSTALL_HINT",
    "CogVideoXI2VAdapter",
    "DiffusersI2V",
    "FlowAccess",
    "FlowInputs",
    "LTXI2VAdapter",
    "ModelSize",
    "Wan22TI2VAdapter",
    "WanI2VAdapter",
    "crop_box",
    "require_diffusers",
    "snap_frames",
    "snap_side",
    "to_uint8",
]
