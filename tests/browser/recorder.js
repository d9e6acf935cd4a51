/**
 * Records what a Pushi object tells its listeners, for the browser tests:
 * `recordPushi(pushi)` returns a list that fills with
 * {kind, event, data, channel} entries, one per listener call.
 */
window.recordPushi = function (pushi, log) {
    log = log || [];
    [
        "message",
        "connected",
        "disconnected",
        "reconnecting",
        "state_change",
        "error",
        "subscribe",
        "subscription_error",
        "unsubscribe",
        "member_added",
        "member_removed",
        "latest"
    ].forEach(function (kind) {
        pushi.bind(kind, function (event, data, channel) {
            log.push({ kind: kind, event: event, data: data, channel: channel });
        });
    });
    return log;
};

window.countOf = function (log, kind, predicate) {
    return log.filter(function (entry) {
        return entry.kind === kind && (!predicate || predicate(entry));
    }).length;
};
