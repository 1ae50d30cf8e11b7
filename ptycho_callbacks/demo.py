"""The main job: train the stand-in PtychoPINN model on simulated data, per scenario."""

import os
from dataclasses import dataclass, field

import numpy as np

SCENARIOS = {
    "stable": dict(amplitude_activation="sigmoid", learning_rate=1e-3),
    # A ReLU amplitude head at a high learning rate dies: the predicted
    # intensity reaches exactly zero and the Poisson NLL takes log(0).
    "nan_poisson": dict(amplitude_activation="relu", learning_rate=3e-2),
}


@dataclass
class DemoConfig:
    """What the demo trains.

    Attributes:
        N: patch size.
        gridsize: 1 or 2.
        n_scan: scan positions along each axis.
        nphotons: expected photons per pattern.
        epochs: epochs per scenario.
        batch_size: batch size.
        n_filters: width of the first convolution.
        loss_weights: (realspace, MAE, Poisson NLL) weights.
        scaler_style: "keras" or "ptychopinn" (see `build_model`).
        seed: seed of data, weights and shuffling.
    """

    N: int = 64
    gridsize: int = 2
    n_scan: int = 9
    nphotons: float = 1e9
    epochs: int = 5
    batch_size: int = 16
    n_filters: int = 16
    loss_weights: tuple = (0.0, 1.0, 1.0)
    scaler_style: str = "keras"
    seed: int = 0
    scenarios: list = field(default_factory=lambda: list(SCENARIOS))


def train_scenario(name, config, data, run_dir, callbacks_factory, verbose=1):
    """Builds a fresh model for one scenario and fits it with the factory's callbacks.

    Returns:
        (model, history)
    """
    from ._keras import keras
    from .sim.model import build_model

    keras.utils.set_random_seed(config.seed)
    model = build_model(
        N=config.N, gridsize=config.gridsize, n_filters=config.n_filters, probe=data.probe,
        intensity_scale=data.intensity_scale, scaler_style=config.scaler_style,
        loss_weights=config.loss_weights, seed=config.seed, **SCENARIOS[name])
    callbacks = callbacks_factory(model, name, run_dir)
    history = model.fit(
        data.model_inputs(), data.model_targets(), batch_size=config.batch_size,
        epochs=config.epochs, shuffle=True, callbacks=callbacks, verbose=verbose)
    return model, history


def keras_callbacks(model, name, run_dir):
    """Keras's own monitoring: TensorBoard logs and a stop on NaN."""
    from ._keras import keras

    return [keras.callbacks.TensorBoard(log_dir=run_dir, update_freq="batch"),
            keras.callbacks.TerminateOnNaN()]


def run_demo(out_dir, config=None, callbacks_factory=keras_callbacks, verbose=1, log=print):
    """Simulates data once and trains every scenario of `config` into `out_dir/<scenario>`.

    Returns:
        dict scenario name -> keras History.
    """
    from .sim.data import simulate

    config = config or DemoConfig()
    unknown = sorted(set(config.scenarios) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {sorted(SCENARIOS)}")
    os.makedirs(out_dir, exist_ok=True)
    data = simulate(N=config.N, gridsize=config.gridsize, n_scan=config.n_scan,
                    nphotons=config.nphotons, seed=config.seed)
    log(f"simulated {data.container_X.shape[0]} groups of {config.gridsize ** 2} patterns "
        f"at N={config.N}; intensity_scale={data.intensity_scale:.3f}")
    histories = {}
    for name in config.scenarios:
        run_dir = os.path.join(out_dir, name)
        log(f"scenario {name!r}: training {config.epochs} epochs -> {run_dir}")
        _, history = train_scenario(name, config, data, run_dir, callbacks_factory, verbose)
        losses = np.asarray(history.history.get("loss", []), dtype=float)
        log(f"scenario {name!r}: {len(losses)} epoch(s), final loss "
            f"{losses[-1] if len(losses) else float('nan'):.6g}")
        histories[name] = history
    log(f"TensorBoard: tensorboard --logdir {os.path.abspath(out_dir)}")
    return histories
