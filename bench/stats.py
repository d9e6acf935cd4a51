"""Percentiles and readers of process CPU time and memory from ``/proc``."""

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def percentile(values, fraction):
    """Returns the ``fraction`` (0..1) percentile of ``values`` by the
    nearest-rank method on the sorted values, or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    if fraction <= 0:
        return ordered[0]
    rank = int(-(-fraction * len(ordered) // 1))  # ceil
    rank = min(max(rank, 1), len(ordered))
    return ordered[rank - 1]


def summarize(values, scale=1000.0, digits=2):
    """Returns ``{"p50", "p95", "p99", "max", "n"}`` of ``values`` multiplied
    by ``scale`` (seconds to milliseconds by default)."""
    ordered = sorted(values)
    result = {"n": len(ordered)}
    for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
        value = percentile(ordered, fraction)
        result[name] = None if value is None else round(value * scale, digits)
    result["max"] = round(ordered[-1] * scale, digits) if ordered else None
    return result


def process_tree(pid):
    """Returns ``pid`` and the pids of all its live descendants."""
    pids = [pid]
    index = 0
    while index < len(pids):
        current = pids[index]
        index += 1
        try:
            for task in os.listdir("/proc/%d/task" % current):
                with open("/proc/%d/task/%s/children" % (current, task)) as file:
                    pids.extend(int(child) for child in file.read().split())
        except OSError:
            continue
    return pids


def cpu_seconds(pid):
    """Returns user plus system CPU seconds used by ``pid`` (0 if gone)."""
    try:
        with open("/proc/%d/stat" % pid) as file:
            text = file.read()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3), utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def tree_cpu_seconds(pid):
    """Returns the CPU seconds of ``pid`` and its live descendants."""
    return sum(cpu_seconds(child) for child in process_tree(pid))


def rss_bytes(pid):
    """Returns the resident set size of ``pid`` in bytes (0 if gone)."""
    try:
        with open("/proc/%d/statm" % pid) as file:
            return int(file.read().split()[1]) * PAGE_SIZE
    except OSError:
        return 0


def status_kb(pid, field="VmRSS"):
    """Returns a memory ``field`` of ``/proc/<pid>/status`` (``VmRSS``,
    ``VmHWM``...) in KB, 0 if the process is gone."""
    try:
        with open("/proc/%d/status" % pid) as file:
            for line in file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_bytes(pid):
    """Returns the summed RSS of ``pid`` and its live descendants."""
    return sum(rss_bytes(child) for child in process_tree(pid))
