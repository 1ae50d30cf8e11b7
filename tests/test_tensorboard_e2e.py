"""TensorBoard end to end: a real `tensorboard` serves the demo's output and is asked what a browser asks.

The demo trains both scenarios once for the session (the `demo` fixture of
conftest.py, which test_demo.py reads too; the NaN scenario gives a NaN event);
a TensorBoard server started on loopback reads the logs, and its HTTP data
API must show every callback's scalars with the right number of points, the
custom-scalars layout, the report and the NaN event as text, and the images.
"""

import json
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

pytestmark = pytest.mark.keras

STARTUP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 15.0
SCENARIOS = ("stable", "nan_poisson")
# The losses Keras logs for PtychoPINN's three outputs (trimmed_obj, intensity_scaler_inv, pred_intensity).
COMPONENTS = ("trimmed_obj_loss", "intensity_scaler_inv_loss", "pred_intensity_loss")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_of(scenario):
    return f"{scenario}/ptycho/train"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TensorBoardServer:
    """A `tensorboard` process on loopback, in its own session so it and its data server stop together."""

    def __init__(self, logdir, work_dir):
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._stderr_path = os.path.join(work_dir, "tensorboard.stderr")
        self._stderr = open(self._stderr_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", logdir,
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._stderr, stderr=subprocess.STDOUT, start_new_session=True)

    def stderr(self):
        self._stderr.flush()
        with open(self._stderr_path, errors="replace") as text:
            return text.read()

    def get_bytes(self, path, **query):
        url = self.base_url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def get(self, path, **query):
        return json.loads(self.get_bytes(path, **query))

    def wait_until(self, loaded, what):
        """Polls `loaded()` until true; fails with the server's output on timeout or exit."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"tensorboard exited with {self.process.returncode} before {what}:\n{self.stderr()}")
            try:
                if loaded():
                    return
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError) as error:
                last_error = error
            time.sleep(0.5)
        pytest.fail(f"tensorboard did not show {what} within {STARTUP_TIMEOUT:.0f} s "
                    f"(last error: {last_error}); its output:\n{self.stderr()}")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._stderr.close()


@pytest.fixture(scope="module")
def server(demo, tmp_path_factory):
    tensorboard = TensorBoardServer(demo.out, str(tmp_path_factory.mktemp("tensorboard_server")))
    try:
        # The report is the last event written to each run: once it is served, the run is loaded.
        tensorboard.wait_until(lambda: {run_of(s) for s in SCENARIOS} <= set(tensorboard.get("/data/runs")),
                               "the runs")
        tensorboard.wait_until(
            lambda: all("report/summary" in tensorboard.get("/data/plugin/text/tags").get(run_of(s), [])
                        for s in SCENARIOS),
            "the reports")
        yield tensorboard
    finally:
        tensorboard.stop()


def scalar_series(server, scenario, tag):
    """[(step, value)] of one scalar tag, as the scalars dashboard receives it."""
    points = server.get("/data/plugin/scalars/scalars", run=run_of(scenario), tag=tag)
    return [(step, float(value)) for _, step, value in points]


def steps_trained(history):
    """Optimizer steps Keras ran: steps per epoch times epochs for a completed fit."""
    return history.params["steps"] * len(history.history["loss"])


def test_runs_are_ours_one_per_scenario(server):
    runs = server.get("/data/runs")
    assert {run_of(s) for s in SCENARIOS} <= set(runs)
    assert all(run.split("/")[0] in SCENARIOS and "/ptycho/" in run for run in runs), runs


def test_every_callback_has_its_scalar_tags(server, demo):
    records = demo.records
    tags = server.get("/data/plugin/scalars/tags")
    stable = set(tags[run_of("stable")])
    scale = {f"scale/{when}/{what}" for when in ("batch", "epoch") for what in ("log_scale", "exp_log_scale")}
    scale |= {"scale/epoch/configured_scale", "scale/epoch/ratio_to_configured"}
    loss = {f"loss/{kind}/{name}" for kind in ("batch", "batch_weighted", "batch_change", "batch_movement_share")
            for name in COMPONENTS}
    loss |= {f"loss/epoch/{name}" for name in COMPONENTS + ("loss",)} | {"loss/batch/loss", "loss/batch/residual"}
    stage_names = [stage["name"] for stage in records["stable"].stages]
    stages = {f"stages/{name}/{stat}" for name in stage_names for stat in ("mean", "std", "min", "max")}
    stages |= {f"stages/ratio/{a}_to_{b}" for a, b in zip(stage_names, stage_names[1:])}
    stages |= {"stages/invariant/chain_product", "stages/invariant/deviation", "bias/amplitude/mae",
               "bias/phase/mae"}
    physics = {"physics/photon_budget/mean", "physics/nonpositive_fraction"}
    expected = scale | loss | stages | physics
    assert not expected - stable, sorted(expected - stable)
    assert "nan/first_step" not in stable
    assert "nan/first_step" in tags[run_of("nan_poisson")]


def test_stable_series_have_one_point_per_step_and_per_epoch(server, demo):
    histories, records = demo.histories, demo.records
    history = histories["stable"]
    steps = steps_trained(history)
    epochs = len(history.history["loss"])
    for tag in ("scale/batch/log_scale", "scale/batch/exp_log_scale", "loss/batch/pred_intensity_loss",
                "loss/batch_change/pred_intensity_loss"):
        assert [step for step, _ in scalar_series(server, "stable", tag)] == list(range(1, steps + 1)), tag
    # The share of the loss's movement starts at the second step (nothing moved at the first) and stays in [0, 1].
    shares = {name: scalar_series(server, "stable", f"loss/batch_movement_share/{name}") for name in COMPONENTS}
    assert [step for step, _ in shares[COMPONENTS[0]]] == list(range(2, steps + 1))
    for row in zip(*shares.values()):
        assert all(0.0 <= value <= 1.0 for _, value in row) and sum(v for _, v in row) == pytest.approx(1, abs=1e-5)
    log_scale = scalar_series(server, "stable", "scale/batch/log_scale")
    exp_log_scale = scalar_series(server, "stable", "scale/batch/exp_log_scale")
    for (_, raw), (_, exp) in zip(log_scale, exp_log_scale):
        assert exp == pytest.approx(math.exp(raw), rel=1e-5)
    epoch_loss = scalar_series(server, "stable", "loss/epoch/loss")
    assert [step for step, _ in epoch_loss] == list(range(1, epochs + 1))  # epochs completed
    assert [value for _, value in epoch_loss] == pytest.approx(history.history["loss"], rel=1e-6)
    epoch_scale = scalar_series(server, "stable", "scale/epoch/log_scale")
    assert [step for step, _ in epoch_scale] == list(range(1, epochs + 1))
    assert epoch_scale[-1][1] == pytest.approx(records["stable"].log_scale["final"], rel=1e-6)
    # Stage statistics: at train begin (step 0) and after every epoch.
    assert [step for step, _ in scalar_series(server, "stable", "stages/prediction/mean")] == \
        list(range(epochs + 1))


def test_nan_scenario_series_end_at_the_event_step_with_a_marker(server, demo):
    histories, records = demo.histories, demo.records
    (event,) = records["nan_poisson"].nan_events
    step = event["step"]
    assert [s for s, _ in scalar_series(server, "nan_poisson", "scale/batch/log_scale")] == list(range(1, step + 1))
    component = event["components"][0]
    batch = scalar_series(server, "nan_poisson", f"loss/batch/{component}")
    assert [s for s, _ in batch] == list(range(1, step + 1))
    assert not math.isfinite(batch[-1][1])
    assert scalar_series(server, "nan_poisson", "nan/first_step") == [(step, float(step))]
    assert len(scalar_series(server, "nan_poisson", "loss/epoch/loss")) == \
        len(histories["nan_poisson"].history["loss"])


def test_custom_scalars_give_each_loss_component_its_own_chart(server):
    layout = server.get("/data/plugin/custom_scalars/layout")
    charts = [chart for category in layout["category"] for chart in category["chart"]]
    stable_tags = set(server.get("/data/plugin/scalars/tags")[run_of("stable")])

    def chart_tags(chart):
        return {tag for regex in chart["multiline"]["tag"] for tag in stable_tags if re.fullmatch(regex, tag)}

    # The NLL (large, negative) and the MAE are orders of magnitude apart: each has an axis of its own.
    for name in COMPONENTS + ("loss",):
        assert [chart_tags(chart) for chart in charts if f"loss/batch/{name}" in chart_tags(chart)] == \
            [{f"loss/batch/{name}"}], name
    (share_chart,) = [chart for chart in charts if f"loss/batch_movement_share/{COMPONENTS[0]}" in chart_tags(chart)]
    assert chart_tags(share_chart) == {f"loss/batch_movement_share/{name}" for name in COMPONENTS}
    assert any("scale/batch/log_scale" in chart_tags(chart) for chart in charts)
    # Batch series (x: global step) and epoch series (x: epochs) never share an axis.
    assert not any({tag.split("/")[1] for tag in chart_tags(chart)} >= {"batch", "epoch"} for chart in charts)
    # What the browser asks to draw a chart: one series per tag matched by its regex.
    (regex,) = share_chart["multiline"]["tag"]
    drawn = server.get("/data/plugin/custom_scalars/scalars", run=run_of("stable"), tag=regex)
    assert drawn["regex_valid"] and set(drawn["tag_to_events"]) == chart_tags(share_chart)


def test_report_and_nan_event_are_in_the_text_dashboard(server, demo):
    out, histories, records = demo.out, demo.histories, demo.records
    text_tags = server.get("/data/plugin/text/tags")
    assert "nan/event" in text_tags[run_of("nan_poisson")]
    assert "nan/event" not in text_tags[run_of("stable")]
    (report,) = server.get("/data/plugin/text/text", run=run_of("stable"), tag="report/summary")
    assert report["step"] == steps_trained(histories["stable"])
    with open(os.path.join(out, "stable", "report.md")) as markdown:
        headings = [line.lstrip("#").strip() for line in markdown if line.startswith("## ")]
    assert headings and all(f"<h2>{heading}</h2>" in report["text"] for heading in headings)
    assert "<table>" in report["text"]

    (event,) = records["nan_poisson"].nan_events
    (shown,) = server.get("/data/plugin/text/text", run=run_of("nan_poisson"), tag="nan/event")
    assert shown["step"] == event["step"]
    assert event["components"][0] in shown["text"] and f"step {event['step']}" in shown["text"]


def test_prediction_and_truth_images_are_served_as_png(server, demo):
    histories, patch = demo.histories, demo.config.N
    tags = server.get("/data/plugin/images/tags")[run_of("stable")]
    assert {"images/amplitude", "images/phase"} <= set(tags)
    samples = server.get("/data/plugin/images/images", run=run_of("stable"), tag="images/amplitude", sample=0)
    assert [sample["step"] for sample in samples] == list(range(len(histories["stable"].history["loss"]) + 1))
    png = server.get_bytes("/data/plugin/images/individualImage?" + samples[-1]["query"])
    assert png.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
    assert (width, height) == (2 * patch + 1, patch)  # prediction | gap | truth


def test_demo_says_where_to_point_tensorboard_before_training_and_where_the_nan_is(demo):
    assert f"tensorboard --logdir {os.path.abspath(demo.out)}" in demo.lines[0]
    assert f"tensorboard --logdir {os.path.abspath(demo.out)}" in demo.lines[-1]
    (event,) = demo.records["nan_poisson"].nan_events
    (outcome,) = [line for line in demo.lines if line.startswith("scenario 'nan_poisson':") and "NaN" in line]
    assert f"step {event['step']}" in outcome
    assert os.path.join(demo.out, "nan_poisson", "report.md") in outcome and "nan/event" in outcome


STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


def hparams_request(server, route, **request):
    """What the HParams dashboard asks: the plugin's routes take a JSON request (its api.proto) as `request`."""
    return server.get(f"/data/plugin/hparams/{route}", request=json.dumps({"experimentName": "", **request}))


def test_hparams_dashboard_has_one_row_per_scenario_with_columns_and_status(server, demo):
    def session_groups():
        return hparams_request(server, "session_groups", allowedStatuses=STATUSES, startIndex=0, sliceSize=100,
                               colParams=[{"hparam": "scenario", "order": "ORDER_ASC"}]).get("sessionGroups", [])

    server.wait_until(lambda: len(session_groups()) == len(SCENARIOS), "the HParams sessions")
    experiment = hparams_request(server, "experiment")
    hparam_names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"scenario", "nphotons", "N", "gridsize", "intensity_scale", "intensity_scale_trainable",
            "learning_rate", "batch_size", "optimizer", "keras_version"} <= hparam_names
    assert {f"weight_{name}" for name in COMPONENTS} <= hparam_names
    metric_tags = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {f"outcome/{kind}_{name}" for kind in ("final", "best") for name in COMPONENTS + ("loss",)} <= metric_tags
    assert {"outcome/trained_scale", "outcome/scale_ratio", "outcome/amp_bias_mean", "outcome/phase_bias_mean",
            "outcome/went_nan", "outcome/nan_step"} <= metric_tags
    assert not any(tag.startswith(("loss/", "scale/", "stages/")) for tag in metric_tags)  # our columns, not every tag

    groups = session_groups()
    assert [group["hparams"]["scenario"] for group in groups] == sorted(SCENARIOS)
    rows = {group["hparams"]["scenario"]: group for group in groups}
    for scenario, rate, status in (("stable", 1e-3, "STATUS_SUCCESS"), ("nan_poisson", 3e-2, "STATUS_FAILURE")):
        group = rows[scenario]
        (session,) = group["sessions"]
        assert session["name"] == run_of(scenario) and session["status"] == status, session
        assert group["hparams"]["learning_rate"] == pytest.approx(rate, rel=1e-6)
        assert group["hparams"]["batch_size"] == demo.config.batch_size
        assert group["hparams"]["nphotons"] == demo.config.nphotons
        values = {value["name"]["tag"]: value["value"] for value in session["metricValues"]}
        record = demo.records[scenario]
        assert values["outcome/best_loss"] == pytest.approx(min(record.history["loss"]), rel=1e-6)
        assert values["outcome/trained_scale"] == pytest.approx(math.exp(record.log_scale["final"]), rel=1e-6)
        assert values["outcome/amp_bias_mean"] == pytest.approx(record.prediction["amplitude_bias"]["mean"], rel=1e-5)
    stable = {v["name"]["tag"]: v["value"] for v in rows["stable"]["sessions"][0]["metricValues"]}
    assert stable["outcome/went_nan"] == 0 and stable["outcome/nan_step"] == -1
    assert stable["outcome/final_loss"] == pytest.approx(demo.records["stable"].history["loss"][-1], rel=1e-6)
    nan = {v["name"]["tag"]: v["value"] for v in rows["nan_poisson"]["sessions"][0]["metricValues"]}
    (event,) = demo.records["nan_poisson"].nan_events
    assert nan["outcome/went_nan"] == 1 and nan["outcome/nan_step"] == event["step"]
