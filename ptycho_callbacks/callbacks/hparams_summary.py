"""The run's row of TensorBoard's HParams dashboard, written through TensorBoard's own HParams API.

What is written comes from `ptycho_callbacks.hparams` (pure); here it goes
into the run's `ptycho/train` event files, the TensorBoard run that holds the
scalars, so that the HParams session (one per run directory, named
`<run>/ptycho/train` in TensorBoard) finds its metrics there:

- the experiment (`hparams_config`): every hyperparameter and metric column,
  each with its type, so that the columns are the same for every run;
- the session start (`hparams`): the hyperparameters that are known;
- one scalar `outcome/<column>` per known, finite outcome;
- the session end: the status of `record.status` (`hparams.SESSION_STATUS`).

All of it is written once, when the run closes: then the configuration is
settled (callbacks fill it in any order at train begin) and the outcome
known. TensorBoard keeps the first summary of a tag, so writing it earlier
would freeze a status of "running".
"""

import datetime
import time

import tensorflow as tf

from .. import hparams
from .._keras import keras
from .scalar_rows import write_scalars


def note_training_setup(record, optimizer, learning_rate):
    """Puts what the fit shows of its setup into `record.config` where the caller said nothing:
    the learning rate at train begin, the optimizer's class name and the Keras version."""
    if learning_rate is not None:
        record.config.setdefault("learning_rate", learning_rate)
    if optimizer is not None:
        record.config.setdefault("optimizer", type(optimizer).__name__)
    record.config.setdefault("keras_version", keras.__version__)


def _seconds(iso_time):
    try:
        return datetime.datetime.fromisoformat(iso_time).timestamp()
    except (TypeError, ValueError):
        return None


def _typed(kind):
    """An HParams domain that gives the column its type and no range (every run declares the same columns)."""
    from tensorboard.plugins.hparams import api as hp
    from tensorboard.plugins.hparams import api_pb2

    class TypeOnly(hp.Domain):
        dtype = property(lambda self: kind)

        def sample_uniform(self, rng=None):
            raise NotImplementedError("a column of a finished run is not sampled")

        def update_hparam_info(self, hparam_info):
            hparam_info.type = {bool: api_pb2.DATA_TYPE_BOOL, str: api_pb2.DATA_TYPE_STRING}.get(
                kind, api_pb2.DATA_TYPE_FLOAT64)

    return TypeOnly()


_STRING_HPARAMS = ("scenario", "optimizer", "keras_version")
_BOOL_HPARAMS = ("intensity_scale_trainable",)


def write_hparams(run, step):
    """Writes the run's HParams experiment, session and outcome scalars into its `train` TensorBoard run."""
    from tensorboard.plugins.hparams import api as hp
    from tensorboard.plugins.hparams import api_pb2
    from tensorboard.plugins.hparams import summary as hp_summary

    record = run.record
    columns = hparams.columns(record)
    declared = [hp.HParam(c.name, _typed(str if c.name in _STRING_HPARAMS else bool if c.name in _BOOL_HPARAMS
                                         else float), description=c.description)
                for c in columns if c.kind == hparams.HPARAM]
    metrics = [hp.Metric(hparams.METRIC_TAG_PREFIX + c.name, description=c.description,
                         dataset_type=hp.Metric.TRAINING) for c in columns if c.kind == hparams.METRIC]
    ended = _seconds(record.ended_at) or time.time()
    status = api_pb2.Status.Value(hparams.session_status(record))
    with run.summaries("train", step=step) as writer:
        if writer is None:
            return
        hp.hparams_config(hparams=declared, metrics=metrics, time_created_secs=_seconds(record.started_at))
        hp.hparams(hparams.hparam_values(record), trial_id=hparams.trial_id(record),
                   start_time_secs=_seconds(record.started_at))
        write_scalars(writer, step, hparams.metric_values(record))
        tf.summary.experimental.write_raw_pb(hp_summary.session_end_pb(status, ended).SerializeToString(), step=0)
