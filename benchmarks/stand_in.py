"""The stand-in model and data every training benchmark uses, and the flags that size them.

TensorFlow is imported inside the functions, so that a parent process that
only starts benchmark subprocesses (memory.py) does not load it.
"""


def add_arguments(parser):
    """The flags that size the stand-in: --N, --gridsize, --n-filters, --n-scan, --batch-size.

    PtychoPINN's real size is N=64, gridsize 2 and 64 first filters
    (`n_filters_scale=2` x 32): `--N 64 --n-filters 64`.
    """
    parser.add_argument("--N", type=int, default=64)
    parser.add_argument("--gridsize", type=int, default=2)
    parser.add_argument("--n-filters", type=int, default=16, help="width of the encoder's first convolution")
    parser.add_argument("--n-scan", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=16)


def simulated_data(args):
    """The simulated data set (nphotons 1e9, seed 0) at the size the flags give."""
    from ptycho_callbacks.sim.data import simulate

    return simulate(N=args.N, gridsize=args.gridsize, n_scan=args.n_scan, nphotons=1e9, seed=0)


def dataset(data):
    """(model inputs, targets) of `data` as an unbatched tf.data.Dataset."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((data.model_inputs(), data.model_targets()))


def batches(args, data):
    """`data` as the endless, batched and prefetched stream the training benchmarks fit on."""
    return dataset(data).repeat().batch(args.batch_size).prefetch(2)


def model(args, data):
    """A freshly seeded stand-in PtychoPINN model for `data`: every config starts from the same weights."""
    from ptycho_callbacks._keras import keras
    from ptycho_callbacks.sim.model import build_model

    keras.utils.set_random_seed(0)
    return build_model(N=args.N, gridsize=args.gridsize, n_filters=args.n_filters, probe=data.probe,
                       intensity_scale=data.intensity_scale)


def built_model(args, data, dataset):
    """A stand-in model fitted for two untimed steps of `dataset`: built, its optimizer's and metrics' variables made."""
    fitted = model(args, data)
    fitted.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0)
    return fitted
