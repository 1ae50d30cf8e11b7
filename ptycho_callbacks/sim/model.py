"""A small, faithful stand-in for a PtychoPINN model (TensorFlow).

It has what matters to the callbacks: the `input`/`input_positions` inputs,
`IntensityScaler` and `IntensityScaler_inv` layers sharing ONE `log_scale`
variable, a CNN with amplitude and phase heads, probe illumination and a
far-field FFT, the outputs `trimmed_obj`, `intensity_scaler_inv` and
`pred_intensity`, and the three weighted losses (real space, MAE, Poisson NLL).

Its layers, `RealspaceLoss` and `negloglik` are registered for saving
(package `ptycho_callbacks`): `model.save("m.keras")` and
`keras.models.load_model("m.keras")` work under both Keras versions once this
module is imported. A loaded model's two scaler layers each hold their own
copy of `log_scale` (equal to the saved value): one variable cannot be shared
across a save.
"""

import math

import numpy as np
import tensorflow as tf

from .._keras import IS_LEGACY, keras

SCALER_STYLES = ("keras", "ptychopinn")


SERIALIZATION_PACKAGE = "ptycho_callbacks"
"""Package name under which the stand-in's layers, loss and `negloglik` are registered for saving."""

serializable = keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)


def _variable_style(variable):
    """How a log_scale variable was made: "keras" (a weight Keras tracks) or "ptychopinn" (a plain `tf.Variable`).

    Keras 3 does not track a plain `tf.Variable` attribute (so it is not saved
    with the weights either); tf_keras tracks every `tf.Variable` attribute.
    """
    keras_variable = getattr(keras, "Variable", None)
    if keras_variable is None or isinstance(variable, keras_variable):
        return "keras"
    return "ptychopinn"


class _LogScaleHolder(keras.layers.Layer):
    """A layer holding the intensity scaler's `log_scale` as its attribute `w`.

    A saved and loaded model cannot share one variable between two layers:
    each loaded scaler layer holds its own copy, equal to the saved value.

    Args:
        log_scale: the variable to hold, or None to create one.
        initial: the initial log_scale of a created variable.
        scale_trainable: whether a created variable is trainable.
        variable_style: how to create it: "keras" (`add_weight`) or
            "ptychopinn" (a plain `tf.Variable`, untracked by Keras 3).
    """

    def __init__(self, log_scale=None, initial=0.0, scale_trainable=True, variable_style="keras", **kwargs):
        super().__init__(**kwargs)
        if log_scale is not None:
            self.w = log_scale
        elif variable_style == "ptychopinn":
            self.w = tf.Variable(initial, dtype=tf.float32, trainable=scale_trainable, name="log_scale")
        else:
            self.w = self.add_weight(
                name="log_scale", shape=(), initializer=keras.initializers.Constant(initial),
                trainable=scale_trainable)

    def get_config(self):
        config = super().get_config()
        # The current value: Keras 3 does not save an untracked variable with the weights.
        config.update(initial=float(tf.convert_to_tensor(self.w)), scale_trainable=bool(self.w.trainable),
                      variable_style=_variable_style(self.w))
        return config


@serializable
class IntensityScaler(_LogScaleHolder):
    """Divides the diffraction input by exp(log_scale).

    Args:
        log_scale: a `tf.Variable` to hold (PtychoPINN's style, kept as the
            attribute `w`), or None to create a Keras weight named `log_scale`.
        initial: the initial log_scale when the layer creates its own weight.
        scale_trainable: whether that weight is trainable.
        variable_style: "keras" or "ptychopinn", how a created weight is made.
    """

    def call(self, inputs):
        return inputs / tf.exp(tf.cast(self.w, inputs.dtype))


@serializable
class IntensityScaler_inv(_LogScaleHolder):  # noqa: N801 - PtychoPINN's class name
    """Multiplies the predicted diffraction amplitude by exp(log_scale).

    Args:
        log_scale: the variable shared with the `IntensityScaler` (None when
            loaded from a saved model: the layer then holds its own copy).
        initial, scale_trainable, variable_style: as for `IntensityScaler`.
    """

    def call(self, inputs):
        return inputs * tf.exp(tf.cast(self.w, inputs.dtype))


@serializable
class CombineComplex(keras.layers.Layer):
    """amplitude * exp(i * phase) as complex64."""

    def call(self, amplitude, phase):
        return tf.complex(amplitude * tf.cos(phase), amplitude * tf.sin(phase))

    def compute_output_spec(self, amplitude, phase):
        return keras.KerasTensor(amplitude.shape, dtype="complex64")


@serializable
class FarFieldAmplitude(keras.layers.Layer):
    """Illuminates each object patch with the probe and returns |FFT2| (orthonormal, centred).

    Args:
        probe: (N, N) complex array, the illumination.
    """

    def __init__(self, probe, **kwargs):
        super().__init__(**kwargs)
        self.probe = tf.constant(np.asarray(probe, dtype=np.complex64))

    def get_config(self):
        config = super().get_config()
        probe = self.probe.numpy()
        config.update(probe_real=probe.real.tolist(), probe_imag=probe.imag.tolist())
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        probe = np.asarray(config.pop("probe_real")) + 1j * np.asarray(config.pop("probe_imag"))
        return cls(probe, **config)

    def call(self, obj):
        waves = tf.transpose(obj, (0, 3, 1, 2)) * self.probe
        n = tf.cast(tf.shape(waves)[-1], tf.float32)
        spectrum = tf.signal.fft2d(waves) / tf.complex(n, 0.0)
        spectrum = tf.signal.fftshift(spectrum, axes=(-2, -1))
        return tf.transpose(tf.abs(spectrum), (0, 2, 3, 1))

    def compute_output_spec(self, obj):
        return keras.KerasTensor(obj.shape, dtype="float32")


@serializable
class Square(keras.layers.Layer):
    """Amplitude to intensity."""

    def call(self, inputs):
        return tf.square(inputs)


@serializable
class PhaseActivation(keras.layers.Layer):
    """pi * tanh, PtychoPINN's phase head."""

    def call(self, inputs):
        return math.pi * tf.tanh(inputs)


def realspace_loss(y_true, y_pred):
    """Mean absolute error between object amplitudes (complex inputs)."""
    return tf.reduce_mean(tf.abs(tf.abs(y_pred) - tf.abs(tf.cast(y_true, y_pred.dtype))), axis=(1, 2, 3))


def _replica_share(loss):
    """A replica's share of a batch-mean loss, as Keras 3's own losses return it.

    Under a strategy with several replicas Keras 3 divides each replica's
    loss by their number (it sums them later); tf_keras does not.
    """
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if IS_LEGACY or replicas == 1 else loss / replicas


@serializable
class RealspaceLoss(keras.losses.Loss):
    """`realspace_loss` averaged over the batch, on the complex object as it is.

    Keras casts a loss's inputs to float, which drops the imaginary part of a
    complex object; this loss takes them as they come.
    """

    def __init__(self, name="realspace_loss"):
        super().__init__(name=name)

    def __call__(self, y_true, y_pred, sample_weight=None):
        per_sample = realspace_loss(y_true, y_pred)
        if sample_weight is None:
            mean = tf.reduce_mean(per_sample)
        else:
            weights = tf.cast(tf.reshape(sample_weight, [-1]), per_sample.dtype)
            mean = tf.reduce_sum(per_sample * weights) / tf.cast(tf.size(per_sample), per_sample.dtype)
        return _replica_share(mean)

    def call(self, y_true, y_pred):
        return realspace_loss(y_true, y_pred)

    def get_config(self):
        return {"name": self.name}


@serializable
def negloglik(y_true, y_pred):
    """Poisson negative log-likelihood of counts y_true given intensities y_pred.

    Like PtychoPINN's: NaN or infinite as soon as a predicted intensity is 0.
    """
    return tf.reduce_mean(
        tf.nn.log_poisson_loss(y_true, tf.math.log(y_pred), compute_full_loss=False), axis=(1, 2, 3))


def build_model(N=64, gridsize=2, n_filters=16, probe=None, intensity_scale=988.212,
                scale_trainable=True, scaler_style="keras", loss_weights=(0.0, 1.0, 1.0),
                amplitude_activation="sigmoid", learning_rate=1e-3, compile=True, seed=0):
    """Builds (and compiles) the stand-in PtychoPINN model.

    Args:
        N: patch size (16 to 64 in tests; any multiple of 4 works).
        gridsize: 1 or 2; the input has gridsize**2 channels.
        n_filters: width of the first convolution.
        probe: (N, N) complex illumination; a centred disk if None.
        intensity_scale: configured scale; log_scale starts at its log.
        scale_trainable: whether log_scale is declared trainable.
        scaler_style: "keras" (log_scale made with `add_weight`) or
            "ptychopinn" (a plain `tf.Variable` set as the layers' attribute `w`,
            as PtychoPINN does; Keras 3 does not track nor train it).
        loss_weights: (realspace, MAE, Poisson NLL) weights.
        amplitude_activation: activation of the amplitude head.
        learning_rate: Adam's learning rate.
        compile: compile with the three losses when True.
        seed: seed of the weight initialisation.

    Returns:
        A `keras.Model` with outputs `trimmed_obj`, `intensity_scaler_inv`,
        `pred_intensity`.
    """
    if scaler_style not in SCALER_STYLES:
        raise ValueError(f"scaler_style must be one of {SCALER_STYLES}, got {scaler_style!r}")
    if gridsize not in (1, 2):
        raise ValueError(f"gridsize must be 1 or 2, got {gridsize}")
    if N % 4 or N < 8:
        raise ValueError(f"N must be a multiple of 4 and at least 8, got {N}")
    if not intensity_scale > 0:
        raise ValueError(f"intensity_scale must be positive, got {intensity_scale}")
    if probe is None:
        from .data import disk_probe
        probe = disk_probe(N)
    channels = gridsize ** 2
    initial = float(np.log(intensity_scale))
    init = keras.initializers.GlorotUniform(seed=seed)

    diffraction = keras.Input((N, N, channels), name="input")
    positions = keras.Input((1, 2, channels), name="input_positions")
    if scaler_style == "ptychopinn":
        shared = tf.Variable(initial, dtype=tf.float32, trainable=scale_trainable, name="log_scale")
        scaler = IntensityScaler(shared, name="intensity_scaler")
    else:
        scaler = IntensityScaler(None, initial, scale_trainable, name="intensity_scaler")
        shared = scaler.w
    x = scaler(diffraction)
    # PtychoPINN uses the positions to place the patches; the stand-in folds
    # their (centred, zero-mean) offsets in as a per-channel bias of zero mean.
    position_bias = keras.layers.Reshape((1, 1, 2 * channels))(positions)
    position_bias = keras.layers.Dense(channels, use_bias=False, kernel_initializer="zeros",
                                       name="position_mixing")(position_bias)
    x = keras.layers.Add()([x, position_bias])

    def conv(filters, h, name):
        return keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                                   kernel_initializer=init, name=name)(h)

    e1 = conv(n_filters, x, "enc1")
    e2 = conv(2 * n_filters, keras.layers.MaxPooling2D(name="pool1")(e1), "enc2")
    e3 = conv(4 * n_filters, keras.layers.MaxPooling2D(name="pool2")(e2), "enc3")
    d2 = conv(2 * n_filters, keras.layers.UpSampling2D(name="up2")(e3), "dec2")
    d2 = keras.layers.Concatenate(name="skip2")([d2, e2])
    d1 = conv(n_filters, keras.layers.UpSampling2D(name="up1")(d2), "dec1")
    d1 = keras.layers.Concatenate(name="skip1")([d1, e1])
    amplitude = keras.layers.Conv2D(channels, 3, padding="same", activation=amplitude_activation,
                                    kernel_initializer=init, name="amp_head")(d1)
    phase = keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer=init,
                                name="phase_head")(d1)
    phase = PhaseActivation(name="phase")(phase)
    obj = CombineComplex(name="trimmed_obj")(amplitude, phase)
    predicted = FarFieldAmplitude(probe, name="pred_amplitude")(obj)
    predicted = IntensityScaler_inv(shared, name="intensity_scaler_inv")(predicted)
    intensity = Square(name="pred_intensity")(predicted)

    model = keras.Model([diffraction, positions], [obj, predicted, intensity], name="ptychopinn_standin")
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=[RealspaceLoss(), "mean_absolute_error", negloglik],
            loss_weights=list(loss_weights),
        )
    return model
