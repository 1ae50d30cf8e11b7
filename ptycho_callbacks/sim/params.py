"""The stand-in's global configuration, a dict like PtychoPINN's `ptycho.params.cfg`.

PtychoPINN's layers read its global `params.cfg` when they are constructed:
`IntensityScaler` reads `intensity_scale` and `intensity_scale.trainable`,
`ProbeIllumination` reads `probe` and `probe.trainable`. So do the
stand-in's, from `cfg` here. `build_model` fills it from its arguments before
it builds (as PtychoPINN's `create_model_with_gridsize` updates `params.cfg`);
a fresh process that loads a saved stand-in model must fill it first, as a
PtychoPINN user must: `setup(config)` does that from a run's recorded config
(`ptycho-callbacks replay RUN --setup ptycho_callbacks.sim.params:setup`).
"""

import numpy as np

DEFAULTS = {
    "N": 64, "gridsize": 2, "nphotons": 1e9, "batch_size": 16, "nepochs": 5,
    "mae_weight": 1.0, "nll_weight": 1.0, "realspace_weight": 0.0,
    "intensity_scale.trainable": True, "probe.trainable": False,
}
"""What `cfg` holds in a fresh process. Like PtychoPINN's defaults, no `intensity_scale` and no `probe`:
a layer that needs them fails with a KeyError until they are set."""

cfg = dict(DEFAULTS)
"""The global configuration the stand-in's layers read when they are constructed."""

_RUN_CONFIG_KEYS = {"N": "N", "gridsize": "gridsize", "nphotons": "nphotons", "intensity_scale": "intensity_scale",
                    "intensity_scale_trainable": "intensity_scale.trainable",
                    "intensity_scale.trainable": "intensity_scale.trainable"}


def setup(config):
    """Fills `cfg` from a run's recorded config, so that a saved stand-in model can be loaded.

    Args:
        config: the run's config (`record.json`'s `config`, or the forensics
            manifest's): at least `N` and `intensity_scale`.

    The probe is the simulator's disk of size N: a replay then sets the
    saved probe's value over it.

    Raises:
        KeyError: `config` lacks `N` or `intensity_scale`.
    """
    from .data import disk_probe

    for key, name in _RUN_CONFIG_KEYS.items():
        if key in config:
            cfg[name] = config[key]
    for key in ("N", "intensity_scale"):
        if key not in cfg:
            raise KeyError(f"the run's config has no {key!r}: the stand-in's layers need it")
    cfg["N"] = int(cfg["N"])
    cfg["probe"] = np.asarray(disk_probe(cfg["N"]), dtype=np.complex64)
