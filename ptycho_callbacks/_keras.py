"""The Keras our users train with: Keras 3, or tf_keras when TF_USE_LEGACY_KERAS is set.

TensorFlow's own `tf.keras` follows the same switch; importing the package
directly keeps subclassing and isinstance checks unambiguous.
"""

import os

IS_LEGACY = os.environ.get("TF_USE_LEGACY_KERAS", "").strip().lower() in ("1", "true", "yes")

if IS_LEGACY:
    import tf_keras as keras  # noqa: F401
else:
    import keras  # noqa: F401

KERAS_MAJOR = int(keras.__version__.split(".")[0])
