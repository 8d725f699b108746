"""usedge: an ultrasound skin-tumor classifier from training to the bedside."""

__version__ = "0.1.0"

CLASS_NAMES = ("epidermal_cyst", "lipoma", "pilomatricoma")
