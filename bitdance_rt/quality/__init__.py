"""Quality gates: measured figures of generated images from trained models (``digits_gate``)."""
