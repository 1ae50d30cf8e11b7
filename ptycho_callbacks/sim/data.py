"""Simulated ptychography training data with known ground truth (numpy only).

The data path mirrors PtychoPINN's: raw diffraction amplitudes (square roots of
Poisson photon counts) -> groups of gridsize**2 neighbouring patterns ->
`normalize_data` (one gain for the whole set) -> the training container's X.
Every stage is returned so that callbacks and reports can follow the chain.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SimulatedData:
    """Every stage of a simulated data path, plus the truth it came from.

    Attributes:
        raw_diffraction: (n_positions, N, N) float32, sqrt of Poisson counts.
        grouped_diffraction: (n_groups, N, N, C) float32, C = gridsize**2.
        normalized: (n_groups, N, N, C) float32, `normalize_gain * grouped`.
        container_X: (n_groups, N, N, C) float32, what the model is trained on
            (before multiplying by `intensity_scale`).
        positions: (n_groups, 1, 2, C) float32 scan offsets (pixels) of each
            channel relative to the group's centre.
        truth_object: (n_groups, N, N, C) complex64 object patches.
        truth_diffraction: (n_groups, N, N, C) float32 noise-free diffraction
            amplitude in normalized units.
        probe: (N, N) complex64 illumination.
        normalize_gain: the gain `normalize_data` applied.
        e_batch_intensity: E over patterns of sum_xy |X|^2 of normalized X.
        intensity_scale: dataset-derived `sqrt(nphotons / e_batch_intensity)`.
    """

    raw_diffraction: np.ndarray
    grouped_diffraction: np.ndarray
    normalized: np.ndarray
    container_X: np.ndarray
    positions: np.ndarray
    truth_object: np.ndarray
    truth_diffraction: np.ndarray
    probe: np.ndarray
    normalize_gain: float
    e_batch_intensity: float
    intensity_scale: float
    nphotons: float
    N: int
    gridsize: int

    def model_inputs(self, intensity_scale=None):
        """Inputs as PtychoPINN feeds them: `intensity_scale * X` and positions."""
        scale = self.intensity_scale if intensity_scale is None else intensity_scale
        return {
            "input": (scale * self.container_X).astype(np.float32),
            "input_positions": self.positions,
        }

    def model_targets(self, intensity_scale=None):
        """Targets for (trimmed_obj, intensity_scaler_inv, pred_intensity)."""
        scale = self.intensity_scale if intensity_scale is None else intensity_scale
        amplitude = (scale * self.container_X).astype(np.float32)
        return {
            "trimmed_obj": self.truth_object,
            "intensity_scaler_inv": amplitude,
            "pred_intensity": np.square(amplitude),
        }

    def stages(self):
        """The named data-path stages, in order, as (name, label, source, array)."""
        return [
            ("raw_diffraction", "Raw diffraction", "RawData", self.raw_diffraction),
            ("grouped_diffraction", "Grouped diffraction", "RawData.generate_grouped_data",
             self.grouped_diffraction),
            ("grouped_X_full", "Grouped X (normalized)", "normalize_data", self.normalized),
            ("container_X", "Container X", "PtychoDataContainer", self.container_X),
        ]


def lines_object(size, n_lines, rng):
    """A complex "lines" object: random anti-aliased segments in amplitude and phase."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    density = np.zeros((size, size))
    for _ in range(n_lines):
        start = rng.uniform(0, size, 2)
        direction = rng.normal(size=2)
        direction /= np.linalg.norm(direction)
        length = rng.uniform(size / 8, size / 2)
        width = rng.uniform(0.7, 2.0)
        rel_y, rel_x = yy - start[0], xx - start[1]
        along = np.clip(rel_y * direction[0] + rel_x * direction[1], 0, length)
        dist = np.hypot(rel_y - along * direction[0], rel_x - along * direction[1])
        density += np.exp(-0.5 * (dist / width) ** 2)
    density = np.clip(density, 0, 1)
    amplitude = 0.5 + 0.5 * density
    phase = 0.8 * density
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def disk_probe(N):
    """A soft-edged disk illumination with a gentle phase curvature (peak amplitude 1)."""
    yy, xx = np.mgrid[0:N, 0:N] - (N - 1) / 2.0
    radius = np.hypot(yy, xx)
    amplitude = 1.0 / (1.0 + np.exp((radius - N / 4.0) / (N / 32.0)))
    phase = 0.5 * (radius / (N / 2.0)) ** 2
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def far_field_amplitude(exit_waves):
    """|FFT2| with orthonormal scaling over the two leading pattern axes, centred."""
    spectrum = np.fft.fftshift(np.fft.fft2(exit_waves, axes=(-2, -1), norm="ortho"), axes=(-2, -1))
    return np.abs(spectrum)


def simulate(N=64, gridsize=2, n_scan=9, nphotons=1e9, n_lines=40, seed=0):
    """Simulates a scan of a lines object and returns every data-path stage.

    Args:
        N: patch (diffraction pattern) size in pixels.
        gridsize: neighbours per group along one axis; each group holds
            gridsize**2 patterns as channels.
        n_scan: scan positions along each axis (n_scan**2 patterns).
        nphotons: expected photons per diffraction pattern.
        n_lines: number of line segments in the object.
        seed: seed of every random draw; equal seeds give equal data.

    Returns:
        A `SimulatedData`.

    Example:
    >>> data = simulate(N=32, gridsize=2, n_scan=5, nphotons=1e6, seed=1)
    >>> data.container_X.shape
    (16, 32, 32, 4)
    """
    if N < 8 or N % 4:
        raise ValueError(f"N must be a multiple of 4 and at least 8, got {N}")
    if gridsize < 1 or n_scan < gridsize:
        raise ValueError(f"need 1 <= gridsize <= n_scan, got gridsize={gridsize}, n_scan={n_scan}")
    if not nphotons > 0:
        raise ValueError(f"nphotons must be positive, got {nphotons}")
    rng = np.random.default_rng(seed)
    step = N // 4
    canvas = N + step * (n_scan - 1)
    obj = lines_object(canvas, n_lines, rng)
    probe = disk_probe(N)

    corners = [(i * step, j * step) for i in range(n_scan) for j in range(n_scan)]
    patches = np.stack([obj[y:y + N, x:x + N] for y, x in corners])
    exit_waves = probe[None] * patches
    # Scale the probe so that an ideal model's diffraction amplitude equals the
    # normalized data: orthonormal FFT keeps sum|psi|^2, which must be (N/2)^2.
    probe_gain = np.sqrt((N / 2.0) ** 2 / np.mean(np.sum(np.abs(exit_waves) ** 2, axis=(1, 2))))
    probe = (probe * probe_gain).astype(np.complex64)
    exit_waves = exit_waves * probe_gain
    ideal = far_field_amplitude(exit_waves)

    expected_counts = ideal ** 2 * (nphotons / np.mean(np.sum(ideal ** 2, axis=(1, 2))))
    raw = np.sqrt(rng.poisson(expected_counts)).astype(np.float32)
    ideal_raw_units = np.sqrt(expected_counts)

    anchors = [(i, j) for i in range(n_scan - gridsize + 1) for j in range(n_scan - gridsize + 1)]
    members = [[(i + di) * n_scan + (j + dj) for di in range(gridsize) for dj in range(gridsize)]
               for i, j in anchors]
    members = np.asarray(members)
    grouped = np.moveaxis(raw[members], 1, -1)
    truth_object = np.moveaxis(patches[members], 1, -1).astype(np.complex64)
    offsets = np.asarray([[di * step, dj * step] for di in range(gridsize) for dj in range(gridsize)],
                         dtype=np.float32)
    offsets -= offsets.mean(axis=0)
    positions = np.broadcast_to(offsets.T[None, None], (len(anchors), 1, 2, gridsize ** 2))

    # normalize_data: one gain so that E[sum_xy X^2] over patterns is (N/2)^2.
    gain = float(np.sqrt((N / 2.0) ** 2 / np.mean(np.sum(grouped.astype(np.float64) ** 2, axis=(1, 2)))))
    normalized = (grouped * gain).astype(np.float32)
    container_X = normalized.copy()
    e_batch = float(np.mean(np.sum(container_X.astype(np.float64) ** 2, axis=(1, 2))))
    truth_diffraction = (np.moveaxis(ideal_raw_units[members], 1, -1) * gain).astype(np.float32)

    return SimulatedData(
        raw_diffraction=raw,
        grouped_diffraction=grouped.astype(np.float32),
        normalized=normalized,
        container_X=container_X,
        positions=np.ascontiguousarray(positions, dtype=np.float32),
        truth_object=truth_object,
        truth_diffraction=truth_diffraction,
        probe=probe,
        normalize_gain=gain,
        e_batch_intensity=e_batch,
        intensity_scale=float(np.sqrt(nphotons / e_batch)),
        nphotons=float(nphotons),
        N=N,
        gridsize=gridsize,
    )


def ptychopinn_objects(data, loss_weights=(0.0, 1.0, 1.0), intensity_scale=None, intensity_scale_trainable=True,
                       batch_size=16, nepochs=2):
    """Stand-ins for PtychoPINN's own objects, made of `data`: what a PtychoPINN training script holds.

    Nothing of PtychoPINN is imported: the objects only have its names and
    shapes (read from `ptycho/params.py`, `loader.py` and `raw_data.py`).

    Args:
        data: a `SimulatedData` (from `simulate`).
        loss_weights: (realspace_weight, mae_weight, nll_weight).
        intensity_scale: `params.cfg['intensity_scale']`; `data.intensity_scale` if None.
        intensity_scale_trainable: `params.cfg['intensity_scale.trainable']`.
        batch_size, nepochs: `params.cfg['batch_size']`, `params.cfg['nepochs']`.

    Returns:
        A namespace of four objects:
        `cfg`, a dict with `params.cfg`'s keys (`N`, `gridsize`, `nphotons`,
        `intensity_scale`, `intensity_scale.trainable`, the three loss weights,
        `probe`, ...); `container`, with `PtychoDataContainer`'s attributes
        (`X`, `Y_I`, `Y_phi`, `coords_nominal`, `coords_true`, `coords`,
        `probe`, `norm_Y_I`, ...); `grouped`, the dict
        `RawData.generate_grouped_data` returns (`diffraction`, `X_full`, `Y`,
        coordinates, `nn_indices`); `raw`, with `RawData`'s attributes
        (`diff3d`, `xcoords`, `ycoords`, `probeGuess`, ...).
    """
    from types import SimpleNamespace

    N, gridsize = data.N, data.gridsize
    n_scan = int(round(np.sqrt(data.raw_diffraction.shape[0])))
    step = N // 4
    scan_y, scan_x = np.divmod(np.arange(n_scan * n_scan), n_scan)
    xcoords, ycoords = (scan_x * step).astype(np.float64), (scan_y * step).astype(np.float64)
    anchors = [(i, j) for i in range(n_scan - gridsize + 1) for j in range(n_scan - gridsize + 1)]
    nn_indices = np.asarray([[(i + di) * n_scan + (j + dj) for di in range(gridsize) for dj in range(gridsize)]
                             for i, j in anchors])
    coords_nn = np.stack([xcoords[nn_indices], ycoords[nn_indices]], axis=1)[:, None]  # (n, 1, 2, C)
    coords_offsets = coords_nn.mean(axis=3, keepdims=True)
    coords_relative = data.positions
    scale = data.intensity_scale if intensity_scale is None else float(intensity_scale)
    realspace_weight, mae_weight, nll_weight = loss_weights
    cfg = {
        "N": N, "gridsize": gridsize, "offset": step, "nphotons": data.nphotons,
        "intensity_scale": scale, "intensity_scale.trainable": bool(intensity_scale_trainable),
        "mae_weight": float(mae_weight), "nll_weight": float(nll_weight),
        "realspace_weight": float(realspace_weight), "tv_weight": 0.0,
        "batch_size": batch_size, "nepochs": nepochs, "n_filters_scale": 2, "amp_activation": "sigmoid",
        "model_type": "pinn", "object.big": True, "probe.trainable": False, "probe": data.probe[..., None],
        "output_prefix": "outputs", "label": "",
    }
    container = SimpleNamespace(
        X=data.container_X, Y_I=np.abs(data.truth_object).astype(np.float32),
        Y_phi=np.angle(data.truth_object).astype(np.float32), coords_nominal=coords_relative,
        coords_true=coords_relative, coords=coords_relative, probe=data.probe,
        norm_Y_I=float(np.sqrt(data.nphotons / data.e_batch_intensity)), YY_full=None, nn_indices=nn_indices,
        global_offsets=coords_offsets, local_offsets=coords_relative)
    grouped = {
        "diffraction": data.grouped_diffraction, "X_full": data.normalized, "Y": data.truth_object,
        "coords_offsets": coords_offsets, "coords_relative": coords_relative,
        "coords_start_offsets": coords_offsets, "coords_start_relative": coords_relative,
        "coords_nn": coords_nn, "coords_start_nn": coords_nn, "nn_indices": nn_indices, "objectGuess": None,
    }
    raw = SimpleNamespace(
        xcoords=xcoords, ycoords=ycoords, xcoords_start=xcoords, ycoords_start=ycoords,
        diff3d=data.raw_diffraction, probeGuess=data.probe, scan_index=np.zeros(n_scan * n_scan, dtype=int),
        objectGuess=None, Y=None, norm_Y_I=None, metadata=None)
    return SimpleNamespace(cfg=cfg, container=container, grouped=grouped, raw=raw)
