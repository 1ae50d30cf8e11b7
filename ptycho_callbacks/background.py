"""Background: the one worker thread of the process that finishes runs' closing work off the training thread.

A run's figures take a matplotlib second or so to draw; drawn where the run
closes, they would hold every fit of a sweep up by as much. `Run.defer` hands
such work here: the fit returns, the work is done on this thread while the
next one trains, and the process waits for it before it exits.
"""

import concurrent.futures
import threading
import warnings


class Background:
    """Runs work one piece at a time on one thread, made at the first `submit`.

    Python joins the thread before the process exits (before `atexit`
    handlers run), so submitted work is never lost to a normal exit. Work
    submitted after that point, by an `atexit` handler, runs at once in the
    caller. Work that raises costs a warning, never the caller.

    Example:
    >>> done = BACKGROUND.submit(lambda: draw_figures(record), key="runs/gs2")
    >>> BACKGROUND.wait("runs/gs2")   # or done.result()
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._executor = None
        self._pending = {}  # future: key

    def submit(self, work, key):
        """Starts `work()` on the worker thread; returns its `concurrent.futures.Future`.

        `key` names what the work writes (a run directory), for `wait(key)`.
        """
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ptycho_callbacks")
            try:
                future = self._executor.submit(_warning_on_failure, work)
            except RuntimeError:  # the interpreter is shutting down: no new thread work
                future = None
            else:
                self._pending[future] = key
        if future is None:
            future = concurrent.futures.Future()
            _warning_on_failure(work)
            future.set_result(None)
        else:
            future.add_done_callback(self._done)
        return future

    def _done(self, future):
        with self._lock:
            self._pending.pop(future, None)

    def wait(self, key, timeout=None):
        """Waits until the work submitted so far with `key` is done, at most `timeout` seconds; True when it is."""
        with self._lock:
            pending = [future for future, its_key in self._pending.items() if its_key == key]
        return not concurrent.futures.wait(pending, timeout=timeout).not_done


def _warning_on_failure(work):
    try:
        work()
    except Exception as error:  # noqa: BLE001 - closing work never costs the training
        warnings.warn(f"ptycho_callbacks: work finishing a run failed off the training thread "
                      f"({type(error).__name__}: {' '.join(str(error).split())[:300]})", RuntimeWarning, stacklevel=1)


BACKGROUND = Background()
"""The process's one `Background`."""
