"""A PtychoPINN-style training with the data-path stages, a probe batch and the ground truth.

Uses the bundled stand-in model and simulated data; with PtychoPINN, take the
arrays from its data container (X, Y_I, Y_phi, ...) and its `params.cfg`.

Run: python examples/ptychopinn_style.py --out runs/gs2_base
"""

import argparse

from ptycho_callbacks import Probe, default_callbacks
from ptycho_callbacks.sim.data import simulate
from ptycho_callbacks.sim.model import build_model

PROBE = 4


def main(out, epochs=3, N=32):
    data = simulate(N=N, gridsize=2, n_scan=6)
    model = build_model(N=N, gridsize=2, n_filters=8, probe=data.probe, intensity_scale=data.intensity_scale)

    inputs = {name: array[:PROBE] for name, array in data.model_inputs().items()}
    stages = [dict(name=name, label=label, source=source, array=array) for name, label, source, array in data.stages()]
    stages += [dict(name="prediction", label="Prediction", layer="pred_amplitude"),
               dict(name="truth", label="Truth", array=data.truth_diffraction[:PROBE])]
    config = dict(nphotons=data.nphotons, N=data.N, gridsize=data.gridsize, intensity_scale=data.intensity_scale,
                  intensity_scale_trainable=True, normalize_gain=data.normalize_gain,
                  e_batch_intensity=data.e_batch_intensity)
    callbacks = default_callbacks(
        model, out, config=config, stages=stages,
        probe=Probe(inputs, truth=data.truth_object[:PROBE], counts=data.model_targets()["pred_intensity"][:PROBE]),
        options={"StageStatistics": {"every_n_epochs": 2}})
    model.fit(data.model_inputs(), data.model_targets(), batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)
    print(f"report: {callbacks[-1].report_path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--N", type=int, default=32)
    args = parser.parse_args()
    main(args.out, args.epochs, args.N)
