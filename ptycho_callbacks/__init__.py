"""Keras callbacks that show what happens inside PtychoPINN trainings.

The pure parts (`record`, `stats`, `render`) import numpy only; the callbacks
import TensorFlow when first used.
"""

__version__ = "0.1.0"
