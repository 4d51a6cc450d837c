"""dftune: FaceForensics++ to a fine-tuned, evaluated, submission-ready deepfake detector."""

__version__ = "0.1.0"
