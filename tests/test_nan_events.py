"""The NaN event, its order and its message: pure Python, no TensorFlow."""

import math

import pytest

from ptycho_callbacks.nan import events

pytestmark = pytest.mark.core


def test_components_come_first_then_the_total_then_log_scale_then_the_weights():
    names = ["weights", "loss", "log_scale", "pred_intensity_loss", "val_loss", "trimmed_obj_loss"]
    assert events.order(names) == ["pred_intensity_loss", "trimmed_obj_loss", "loss", "val_loss", "log_scale",
                                   "weights"]


def test_an_event_names_what_went_non_finite_and_keeps_the_last_finite_values():
    last_finite = {"pred_intensity_loss": -3.0, "loss": -2.5, "trimmed_obj_loss": 0.4}
    event = events.build_event(1, 2, 7, "train", {"pred_intensity_loss": math.nan, "loss": math.nan,
                                                  "trimmed_obj_loss": 0.5},
                               last_finite, [("dense/kernel", math.inf, False), ("log_scale", math.nan, True)])
    assert event["components"] == ["pred_intensity_loss", "loss", "log_scale", "weights"]
    assert event["values"]["weights"] == math.inf and math.isnan(event["values"]["log_scale"])
    assert event["last_finite"] == {"pred_intensity_loss": -3.0, "trimmed_obj_loss": 0.5, "loss": -2.5,
                                    "log_scale": None}
    assert event["nonfinite_weights"] == ["dense/kernel", "log_scale"]
    assert (event["epoch"], event["batch"], event["step"], event["weights_restored"]) == (1, 2, 7, False)


def test_without_check_weights_a_weight_is_listed_but_is_no_component():
    event = events.build_event(0, 0, 1, "train", {"loss": math.nan}, {}, [("kernel", math.nan, False)],
                               check_weights=False)
    assert event["components"] == ["loss"] and event["nonfinite_weights"] == ["kernel"]


def test_the_message_says_what_where_what_was_done_and_where_to_look():
    event = events.build_event(1, 0, 5, "train", {"pred_intensity_loss": math.nan, "loss": math.nan},
                               {"pred_intensity_loss": -2856704.0, "loss": -2856448.0})
    line = events.message(event, "stop", True, events.restore_note(4, 0, optimizer_finite=False))
    assert line.startswith("NaNGuard: pred_intensity_loss became NaN at epoch 1, batch 0 (indices from 0; step 5 = train steps done, this one included); "
                           "last finite value -2.86e+06; also non-finite: loss. Training stopped.")
    assert "Restored the weights after step 4, the last finite step." in line
    assert "re-compile before training on" in line and "Poisson NLL" in line


def test_validation_and_raise_and_outside_fit_each_say_so():
    event = events.build_event(2, 3, 9, "val", {"val_loss": math.inf}, {})
    assert "validation batch 3" in events.message(event, "stop", True)
    assert "Training stops at the end of this epoch" in events.message(event, "stop", True)
    assert "Raising NonFiniteTrainingError" in events.message(event, "raise", True)
    assert "Not in model.fit" in events.message(event, "stop", False)
    assert "+Inf" in events.message(event, "stop", True) and "validation data first" in events.message(event, "stop", True)


def test_restoring_before_any_finite_step_says_train_begin():
    assert "the weights of train begin" in events.restore_note(10, 10, optimizer_finite=True)
    assert "re-compile" not in events.restore_note(12, 10, optimizer_finite=True)
