"""One worker of worker mode (``PUSHI_WORKERS``, see ``workers``): today's
``State`` as a node of the cluster on the supervisor's Redis, listening
with ``SO_REUSEPORT``, its events committed by the supervisor's writer;
it stops when the supervisor is gone, even after ``kill -9``."""

import logging
import os
import signal
import sys
import threading

from pushi.base import store as stores
from pushi.base.config import Config
from pushi.base.state import State, configure_logging, run_until_stopped
from pushi.net import wire


def _watch_supervisor(life):
    """A worker's watchdog: the pipe reads end of file once the supervisor
    is gone (even after ``kill -9``), and the worker stops as on SIGTERM."""
    try:
        while os.read(life, 64):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def worker_main(argv=None):
    """One worker: today's ``State`` (a node of the cluster on the
    supervisor's Redis) listening with ``SO_REUSEPORT``, its events
    committed by the supervisor's writer."""
    events, life, ready, retain = (argv or sys.argv)[1:5]
    wire.OwnPort.reuse_port = True
    config = Config.from_env()
    log = configure_logging(config.log_level)
    # the workers share the supervisor's output: each line names its pid
    log.target.setFormatter(
        logging.Formatter(wire.LOG_FORMAT.replace("%(name)s", "%(name)s[%(process)d]"))
    )
    stopping: list[bool] = []

    def terminate(_signum, _frame):
        # once: the supervisor's SIGTERM and its end may both come
        if not stopping:
            stopping.append(True)
            raise KeyboardInterrupt()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
    threading.Thread(
        target=_watch_supervisor,
        args=(int(life),),
        name="pushi-supervisor",
        daemon=True,
    ).start()

    def started():
        log.started()
        os.write(int(ready), b"%d\n" % os.getpid())

    def serve():
        store = stores.open_store(
            data_dir=config.data_dir,
            mongo_url=config.mongo_url,
            events_address=events or None,
            synchronous=config.sqlite_sync,
        )
        state = State(config, store=store)
        state.retain = retain == "1"
        state.serve(started=started)

    run_until_stopped(log, serve)
