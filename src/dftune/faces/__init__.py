"""Face components: box geometry (pure), detectors (one protocol), video frame sampling."""
