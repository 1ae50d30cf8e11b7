"""A small, faithful stand-in for a PtychoPINN model (TensorFlow).

It has what matters to the callbacks: the `input`/`input_positions` inputs,
`IntensityScaler` and `IntensityScaler_inv` layers sharing ONE `log_scale`
variable, a CNN with amplitude and phase heads, probe illumination and a
far-field FFT, the outputs `trimmed_obj`, `intensity_scaler_inv` and
`pred_intensity`, and the three weighted losses (real space, MAE, Poisson NLL).

And it has the traits of PtychoPINN's own code that broke tools before:

- `log_scale` is a plain `tf.Variable` made WITHOUT a name and held by both
  scaler layers as their attribute `w`; the probe of `ProbeIllumination` is
  another unnamed `tf.Variable`. Both are called `Variable`. Keras 3 tracks
  neither (so it never trains `log_scale`), tf_keras tracks both.
- Its layers read the global configuration (`sim.params.cfg`, like
  `ptycho.params.cfg`) when constructed: a saved model cannot be loaded in a
  fresh process until that configuration is set up again (`params.setup`).
- Its loss functions (`RealspaceLoss`, `negloglik`) are not registered with
  Keras: a saved model's compile configuration names functions Keras cannot
  find in a fresh process.
- `negloglik` drops the constant of the Poisson likelihood
  (`compute_full_loss=False`): the total loss is large and negative.

Its layers are registered for saving (package `ptycho_callbacks`), as
PtychoPINN registers its own. Unlike PtychoPINN, which keeps one `log_scale`
for the whole process, each `build_model` makes a new one (so that models
built one after the other, in tests, do not share it); a model loaded from a
file shares the one of the last model built, as in PtychoPINN.
"""

import math

import numpy as np
import tensorflow as tf

from .._keras import IS_LEGACY, keras
from . import params

SCALER_STYLES = ("ptychopinn", "keras")


SERIALIZATION_PACKAGE = "ptycho_callbacks"
"""Package name under which the stand-in's layers are registered for saving (its losses are not)."""

serializable = keras.saving.register_keras_serializable(package=SERIALIZATION_PACKAGE)

_shared = {}
"""The `log_scale` variable the scaler layers of the "ptychopinn" style pick up, as PtychoPINN's module cache."""


def _configured_log_scale():
    return float(np.log(params.cfg["intensity_scale"]))


def shared_log_scale():
    """The unnamed `log_scale` variable made from `params.cfg` the first time a scaler layer asks for it."""
    if "log_scale" not in _shared:
        _shared["log_scale"] = tf.Variable(_configured_log_scale(), dtype=tf.float32,
                                           trainable=bool(params.cfg["intensity_scale.trainable"]))
    return _shared["log_scale"]


class _LogScaleHolder(keras.layers.Layer):
    """A layer holding the intensity scaler's `log_scale` as its attribute `w`.

    Args:
        log_scale: the variable to hold, or None to take it as the style says.
        variable_style: "ptychopinn" (the unnamed plain `tf.Variable` of
            `shared_log_scale`, read from `params.cfg`) or "keras" (a weight
            named `log_scale` made with `add_weight` from `params.cfg`).
    """

    def __init__(self, log_scale=None, variable_style="ptychopinn", **kwargs):
        super().__init__(**kwargs)
        self.variable_style = variable_style
        if log_scale is not None:
            self.w = log_scale
        elif variable_style == "ptychopinn":
            self.w = shared_log_scale()
        else:
            self.w = self.add_weight(
                name="log_scale", shape=(), initializer=keras.initializers.Constant(_configured_log_scale()),
                trainable=bool(params.cfg["intensity_scale.trainable"]))

    def get_config(self):
        return {**super().get_config(), "variable_style": self.variable_style}


@serializable
class IntensityScaler(_LogScaleHolder):
    """Divides the diffraction input by exp(log_scale) (args as `_LogScaleHolder`)."""

    def call(self, inputs):
        return inputs / tf.exp(tf.cast(self.w, inputs.dtype))


@serializable
class IntensityScaler_inv(_LogScaleHolder):  # noqa: N801 - PtychoPINN's class name
    """Multiplies the predicted diffraction amplitude by exp(log_scale) (args as `_LogScaleHolder`).

    Built with `log_scale=` the scaler's variable so that both hold one; a
    loaded model's "keras"-style scalers each hold their own copy.
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
class ProbeIllumination(keras.layers.Layer):
    """Multiplies each object patch by the probe, an unnamed plain `tf.Variable` of shape (1, N, N, 1).

    The probe is read from `params.cfg["probe"]` when the layer is
    constructed, trainable as `params.cfg["probe.trainable"]` says.

    Args:
        as_variable: False holds the probe as a constant instead: the
            collective ops of a multi-worker strategy cannot broadcast a
            complex variable (PtychoPINN's model cannot be trained so either).
    """

    def __init__(self, as_variable=True, **kwargs):
        super().__init__(**kwargs)
        self.as_variable = as_variable
        probe = np.asarray(params.cfg["probe"], dtype=np.complex64)[None, :, :, None]
        if as_variable:
            self.w = tf.Variable(probe, trainable=bool(params.cfg["probe.trainable"]))
        else:
            self.w = tf.constant(probe)

    def get_config(self):
        return {**super().get_config(), "as_variable": self.as_variable}

    def call(self, obj):
        return obj * self.w

    def compute_output_spec(self, obj):
        return keras.KerasTensor(obj.shape, dtype="complex64")


@serializable
class FarFieldAmplitude(keras.layers.Layer):
    """|FFT2| of each illuminated patch (orthonormal, centred)."""

    def call(self, waves):
        waves = tf.transpose(waves, (0, 3, 1, 2))
        n = tf.cast(tf.shape(waves)[-1], tf.float32)
        spectrum = tf.signal.fft2d(waves) / tf.complex(n, 0.0)
        spectrum = tf.signal.fftshift(spectrum, axes=(-2, -1))
        return tf.transpose(tf.abs(spectrum), (0, 2, 3, 1))

    def compute_output_spec(self, waves):
        return keras.KerasTensor(waves.shape, dtype="float32")


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


class RealspaceLoss(keras.losses.Loss):
    """`realspace_loss` averaged over the batch, on the complex object as it is (not registered with Keras).

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


def negloglik(y_true, y_pred):
    """Poisson negative log-likelihood of counts y_true given intensities y_pred, without its constant.

    Like PtychoPINN's: NaN or infinite as soon as a predicted intensity is 0,
    not registered with Keras, and large and negative at high photon counts.
    """
    return tf.reduce_mean(
        tf.nn.log_poisson_loss(y_true, tf.math.log(y_pred), compute_full_loss=False), axis=(1, 2, 3))


def build_model(N=64, gridsize=2, n_filters=16, probe=None, intensity_scale=988.212,
                scale_trainable=True, scaler_style="ptychopinn", loss_weights=(0.0, 1.0, 1.0),
                amplitude_activation="sigmoid", learning_rate=1e-3, compile=True, seed=0, probe_variable=True):
    """Builds (and compiles) the stand-in PtychoPINN model.

    Like PtychoPINN's `create_model_with_gridsize`, it writes its arguments
    into the global configuration (`params.cfg`: N, gridsize,
    intensity_scale, intensity_scale.trainable, probe and the loss weights)
    and the layers read them from there.

    Args:
        N: patch size (16 to 64 in tests; any multiple of 4 works).
        gridsize: 1 or 2; the input has gridsize**2 channels.
        n_filters: width of the first convolution.
        probe: (N, N) complex illumination; a centred disk if None.
        intensity_scale: configured scale; log_scale starts at its log.
        scale_trainable: whether log_scale is declared trainable.
        scaler_style: "ptychopinn" (log_scale an unnamed plain `tf.Variable`
            held as the layers' attribute `w`, as PtychoPINN does; Keras 3
            does not track nor train it) or "keras" (made with `add_weight`).
        loss_weights: (realspace, MAE, Poisson NLL) weights.
        amplitude_activation: activation of the amplitude head.
        learning_rate: Adam's learning rate.
        compile: compile with the three losses when True.
        seed: seed of the weight initialisation.
        probe_variable: hold the probe as an unnamed complex `tf.Variable`,
            as PtychoPINN does (False: a constant, for multi-worker training).

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
    realspace_weight, mae_weight, nll_weight = loss_weights
    params.cfg.update({"N": N, "gridsize": gridsize, "intensity_scale": float(intensity_scale),
                       "intensity_scale.trainable": bool(scale_trainable), "probe": np.asarray(probe, np.complex64),
                       "realspace_weight": realspace_weight, "mae_weight": mae_weight, "nll_weight": nll_weight})
    _shared.clear()
    channels = gridsize ** 2
    init = keras.initializers.GlorotUniform(seed=seed)

    diffraction = keras.Input((N, N, channels), name="input")
    positions = keras.Input((1, 2, channels), name="input_positions")
    scaler = IntensityScaler(variable_style=scaler_style, name="intensity_scaler")
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
    illuminated = ProbeIllumination(probe_variable, name="probe_illumination")(obj)
    predicted = FarFieldAmplitude(name="pred_amplitude")(illuminated)
    # PtychoPINN's name of the predicted amplitude in the units of the input, before the inverse scaler.
    predicted = keras.layers.Activation("linear", name="pred_diff_channels")(predicted)
    predicted = IntensityScaler_inv(scaler.w, scaler_style, name="intensity_scaler_inv")(predicted)
    intensity = Square(name="pred_intensity")(predicted)

    model = keras.Model([diffraction, positions], [obj, predicted, intensity], name="ptychopinn_standin")
    if compile:
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate),
            loss=[RealspaceLoss(), "mean_absolute_error", negloglik],
            loss_weights=list(loss_weights),
        )
    return model
