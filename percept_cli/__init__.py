"""percept: dense perception (depth, optical flow, amodal masks) with diffusion transformers."""

__version__ = "0.1.0"
