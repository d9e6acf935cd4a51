"""The garbage collector of a served process (``State.serve``), seen from
a process of its own: the test's own collector is left alone."""

import json
import subprocess
import sys
import textwrap

from support import env_with_src, free_port

SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    from pushi.base.config import Config
    from pushi.base.state import State

    config = Config(
        server_port=int(sys.argv[1]), app_port=int(sys.argv[2]), data_dir=sys.argv[3]
    )

    def started():
        print(json.dumps({
            "threshold": gc.get_threshold()[0],
            "frozen": gc.get_freeze_count(),
        }), flush=True)
        raise KeyboardInterrupt()

    try:
        State(config).serve(started=started)
    except KeyboardInterrupt:
        pass
    """
)


def test_a_served_process_freezes_its_start_and_collects_less_often(tmp_path):
    """Once both ports listen, what the start made is out of the
    collections (frozen) and the youngest generation is collected less
    often than Python's every 700 allocations (``state.GC_YOUNGEST``)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(free_port()),
            str(free_port()),
            str(tmp_path),
        ],
        env=env_with_src(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["threshold"] > 700
    # the modules and classes of the start, at least
    assert seen["frozen"] > 10000
