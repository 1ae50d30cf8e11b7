"""The suite on a model of your own: two outputs, two losses, nothing else to declare.

Run: python examples/minimal_custom_model.py --out runs/minimal
Then: tensorboard --logdir runs/minimal
"""

import argparse

import numpy as np

from ptycho_callbacks import default_callbacks
from ptycho_callbacks._keras import keras


def main(out, epochs=3):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype("float32")
    y = {"amplitude": np.abs(x[:, :2]), "phase": np.tanh(x[:, 2:4])}

    inputs = keras.Input((8,), name="patterns")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    model = keras.Model(inputs, {"amplitude": keras.layers.Dense(2, name="amplitude")(hidden),
                                 "phase": keras.layers.Dense(2, name="phase")(hidden)})
    model.compile(optimizer="adam", loss={"amplitude": "mae", "phase": "mse"},
                  loss_weights={"amplitude": 1.0, "phase": 0.5})

    # The loss split (amplitude_loss, phase_loss), the NaN guard and the report need nothing more.
    callbacks = default_callbacks(model, out, config={"experiment": "minimal"})
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=callbacks)
    print(f"report: {callbacks[-1].report_path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    main(args.out, args.epochs)
