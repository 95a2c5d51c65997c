"""The canonical audio format every ingress produces and every egress consumes."""

import numpy as np

SAMPLE_RATE = 48_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
FRAME_SECONDS = FRAME_MS / 1000

#: One shared, read-only frame of digital silence (written when no sender is present).
SILENCE = np.zeros(FRAME_SAMPLES, dtype=np.int16)
SILENCE.flags.writeable = False


def as_frame(samples: np.ndarray) -> np.ndarray:
    """Check that ``samples`` is one canonical frame (int16, mono, 960 samples)."""
    if samples.dtype != np.int16 or samples.shape != (FRAME_SAMPLES,):
        raise ValueError(f"not a canonical frame: {samples.dtype} {samples.shape}")
    return samples
