"""The per-app token buckets (``base/rates.py``), on a clock of their own."""

from pushi.base.limits import App
from pushi.base.rates import Rates


def test_a_bucket_holds_a_second_and_a_large_cost_leaves_it_in_debt():
    now = [0.0]
    rates = Rates(clock=lambda: now[0])
    app = App(
        {
            "app_id": 1,
            "key": "k",
            "secret": "s",
            "settings": {"max_backend_events_per_second": 5},
        }
    )
    setting = "max_backend_events_per_second"
    assert [rates.take(app, setting) for _ in range(6)] == [0] * 5 + [1]
    now[0] = 1.0
    # a cost over a second's worth passes on a full bucket, then the app
    # waits for what it overdrew
    assert rates.take(app, setting, 10) == 0
    assert rates.take(app, setting) == 2
    now[0] = 3.0
    assert rates.take(app, setting) == 0
    # unlimited: never counted
    other = App({"app_id": 2, "key": "k2", "secret": "s"})
    assert all(rates.take(other, setting, 100) == 0 for _ in range(100))
