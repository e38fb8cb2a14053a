"""Video data: datasets, transforms and built-in synthetic videos."""
from vjepa_fast.data.synthetic import ClipSpec, SyntheticVideos, render_frames, sample_clip

__all__ = ["ClipSpec", "SyntheticVideos", "render_frames", "sample_clip"]
