"""Makes the README's pictures from a demo's output: TensorBoard screenshots and a report excerpt.

Starts TensorBoard on the demo's directory (loopback only), waits until it
serves every run's report, takes screenshots with headless Chromium
(Debian: `apt-get install -y chromium`), stops TensorBoard by its process
group, and writes `docs/images/*.png` and `docs/report_excerpt.md`; copies the
`stable` run's prediction figure (drawn with the `plots` extra) to
`docs/images/figure_prediction.png`.

Example:
    ptycho-callbacks demo --out /tmp/demo_pics --epochs 5
    python docs/make_pictures.py /tmp/demo_pics
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

DOCS_DIR = os.path.dirname(os.path.abspath(__file__))
SCENARIO = "stable"
COMPONENTS_AND_LOG_SCALE = r"^(loss/batch/.*_loss|scale/batch/log_scale)$"
SCREENSHOTS = {
    # file name: (TensorBoard URL fragment, window width and height)
    "tensorboard_scalars.png": (
        f"scalars&tagFilter={urllib.parse.quote(COMPONENTS_AND_LOG_SCALE, safe='')}"
        f"&regexInput={SCENARIO}&_smoothingWeight=0", (1400, 780)),
    "tensorboard_custom_scalars.png": (
        f"custom_scalars&regexInput={SCENARIO}&_smoothingWeight=0", (1400, 760)),
    "tensorboard_hparams.png": ("hparams", (1400, 560)),
}
EXCERPT_SECTIONS = ("Loss Composition", "IntensityScaler State", "NaN Event")
OMITTED = "*(other sections omitted)*"
LOAD_TIMEOUT = 60.0


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@contextlib.contextmanager
def serve_tensorboard(logdir, runs):
    """Yields the base URL of a TensorBoard on `logdir` once every run in `runs` serves its report."""
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", logdir, "--host", "127.0.0.1",
             "--port", str(port)], stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + LOAD_TIMEOUT
            while True:
                if process.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    raise RuntimeError(f"tensorboard did not serve the reports of {runs}:\n"
                                       + output.read().decode(errors="replace"))
                try:
                    text_tags = _get_json(base_url + "/data/plugin/text/tags")
                    if all("report/summary" in text_tags.get(run, []) for run in runs):
                        break
                except (urllib.error.URLError, ConnectionError):
                    pass
                time.sleep(0.5)
            yield base_url
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)


def screenshot(chromium, url, path, window_size):
    """Renders `url` in headless Chromium (a fresh profile, no network but loopback) into `path`."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=%d,%d" % window_size,
             "--virtual-time-budget=15000", f"--screenshot={path}", url],
            check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not os.path.getsize(path):
        raise RuntimeError(f"chromium wrote an empty screenshot {path}")


def report_excerpt(markdown, sections=EXCERPT_SECTIONS):
    """The report's top table, each scenario's header lines and its `###` sections named in `sections`."""
    kept, keep = [], True
    for line in markdown.splitlines():
        if line.startswith("### "):
            keep = line[4:].strip() in sections
            if not keep and kept[-2:] != [OMITTED, ""]:
                kept += [OMITTED, ""]
        elif line.startswith(("# ", "## ")):
            keep = True
        if keep:
            kept.append(line)
    return "\n".join(kept).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Make docs/images/*.png (TensorBoard screenshots) and docs/report_excerpt.md "
                    "from the output of `ptycho-callbacks demo`.",
        epilog="example:\n  ptycho-callbacks demo --out /tmp/demo_pics --epochs 5\n"
               "  python docs/make_pictures.py /tmp/demo_pics",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("demo_dir", help="output directory of `ptycho-callbacks demo`")
    parser.add_argument("--chromium", default=shutil.which("chromium"),
                        help="Chromium executable (default: chromium on PATH)")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("no chromium found: install it (Debian: apt-get install -y chromium) or pass --chromium")
    summary = os.path.join(args.demo_dir, "summary.md")
    if not os.path.isfile(summary):
        parser.error(f"{summary}: not found; run `ptycho-callbacks demo --out {args.demo_dir}` first")
    scenarios = sorted(name for name in os.listdir(args.demo_dir)
                       if os.path.isfile(os.path.join(args.demo_dir, name, "record.json")))

    images = os.path.join(DOCS_DIR, "images")
    os.makedirs(images, exist_ok=True)
    with serve_tensorboard(args.demo_dir, [f"{name}/ptycho/train" for name in scenarios]) as base_url:
        for name, (fragment, window_size) in SCREENSHOTS.items():
            path = os.path.join(images, name)
            screenshot(args.chromium, f"{base_url}/?darkMode=false#{fragment}", path, window_size)
            print(f"wrote {path}")
    figure = os.path.join(args.demo_dir, SCENARIO, "figures", "prediction.png")
    if os.path.isfile(figure):
        path = os.path.join(images, "figure_prediction.png")
        shutil.copyfile(figure, path)
        print(f"wrote {path}")

    with open(summary, encoding="utf-8") as report:
        excerpt = report_excerpt(report.read())
    path = os.path.join(DOCS_DIR, "report_excerpt.md")
    with open(path, "w", encoding="utf-8") as out:
        out.write("<!-- Made by docs/make_pictures.py from the summary.md of "
                  "`ptycho-callbacks demo --epochs 5`; do not edit by hand. -->\n\n" + excerpt)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
