"""The main job: train the stand-in PtychoPINN model on simulated data, per scenario."""

import os
import shutil
from dataclasses import dataclass, field

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
    """Builds a fresh model for one scenario and fits it with the factory's callbacks,
    `callbacks_factory(model, name, run_dir, data, batch_size)`.

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
    callbacks = callbacks_factory(model, name, run_dir, data, config.batch_size)
    history = model.fit(
        data.model_inputs(), data.model_targets(), batch_size=config.batch_size,
        epochs=config.epochs, shuffle=True, callbacks=callbacks, verbose=verbose)
    return model, history


PROBE_BATCH = 8


def suite_callbacks(model, name, run_dir, data, batch_size=None):
    """Our whole suite, fed with the simulation's stages, configuration (and the fit's batch size) and truth."""
    from .suite import Probe, default_callbacks

    inputs = {key: value[:PROBE_BATCH] for key, value in data.model_inputs().items()}
    stages = [dict(name=n, label=label, source=source, array=array)
              for n, label, source, array in data.stages()]
    stages += [dict(name="prediction", label="Prediction", source="model: pred_amplitude",
                    layer="pred_amplitude"),
               dict(name="truth", label="Truth", source="simulation (noise-free)",
                    array=data.truth_diffraction[:PROBE_BATCH])]
    config = dict(nphotons=data.nphotons, N=data.N, gridsize=data.gridsize,
                  intensity_scale=data.intensity_scale, intensity_scale_trainable=True,
                  normalize_gain=data.normalize_gain, e_batch_intensity=data.e_batch_intensity)
    if batch_size is not None:
        config["batch_size"] = batch_size
    probe = Probe(inputs, truth=data.truth_object[:PROBE_BATCH],
                  counts=data.model_targets()["pred_intensity"][:PROBE_BATCH])
    return default_callbacks(model, run_dir, scenario=name, config=config, stages=stages, probe=probe)


def _outcome(name, history, record, report_path):
    """One line saying how a scenario's training ended and where to look."""
    from .render import fmt_measured

    losses = history.history.get("loss", [])
    summary = (f"scenario {name!r}: {len(losses)} epoch(s), final loss "
               f"{fmt_measured(losses[-1] if losses else None, '%.6g', reason='no epoch finished')}")
    if record is None:
        return summary
    if record.nan_events:
        event = record.nan_events[0]
        return (f"{summary}; stopped at the first NaN/Inf ({', '.join(event['components'])}) at step "
                f"{event['step']}: read the NaN Event section of {report_path} and nan/event in "
                "TensorBoard's Text tab")
    return f"{summary}; {record.status}, {len(record.findings)} finding(s) in {report_path}"


def run_demo(out_dir, config=None, callbacks_factory=suite_callbacks, verbose=1, log=print):
    """Simulates data once, trains every scenario into `out_dir/<scenario>` and
    writes the report comparing them to `out_dir/summary.md` (with matplotlib,
    its figures into `out_dir/figures/`).

    Returns:
        dict scenario name -> keras History.
    """
    from .figures import wanted, write_comparison_section
    from .record import RunRecord, atomic_write_text
    from .render import render_report
    from .run_dir import record_path, report_path
    from .sim.data import simulate

    config = config or DemoConfig()
    unknown = sorted(set(config.scenarios) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown}; known: {sorted(SCENARIOS)}")
    os.makedirs(out_dir, exist_ok=True)
    tensorboard = f"tensorboard --logdir {os.path.abspath(out_dir)}"
    log(f"TensorBoard: to watch the training live, run `{tensorboard}` in another terminal "
        "and open http://localhost:6006")
    data = simulate(N=config.N, gridsize=config.gridsize, n_scan=config.n_scan,
                    nphotons=config.nphotons, seed=config.seed)
    log(f"simulated {data.container_X.shape[0]} groups of {config.gridsize ** 2} patterns "
        f"at N={config.N}; intensity_scale={data.intensity_scale:.3f}")
    histories, records = {}, []
    for name in config.scenarios:
        run_dir = os.path.join(out_dir, name)
        if os.path.isdir(run_dir):  # the demo's runs are its own: a new demo replaces them
            shutil.rmtree(run_dir)
            log(f"scenario {name!r}: replacing the previous demo run in {run_dir}")
        log(f"scenario {name!r}: training {config.epochs} epoch(s) -> {run_dir}")
        _, history = train_scenario(name, config, data, run_dir, callbacks_factory, verbose)
        histories[name] = history
        saved = record_path(run_dir)
        record = RunRecord.load(saved) if os.path.exists(saved) else None
        if record is not None:
            records.append(record)
        log(_outcome(name, history, record, report_path(run_dir)))
    if records:
        summary = os.path.join(out_dir, "summary.md")
        figures = write_comparison_section(records, summary) if wanted() else ""  # as the runs' own
        atomic_write_text(summary, render_report(records) + figures)
        log(f"report comparing the scenarios: {os.path.abspath(summary)}")
    log(f"TensorBoard: `{tensorboard}`, then open http://localhost:6006: Custom Scalars holds the loss "
        "components (one chart each, and their shares of the loss's movement) and log_scale; Scalars, Images and Text (the report, NaN events) "
        "hold the rest")
    return histories
