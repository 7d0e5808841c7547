"""The phase clock: a phase's own seconds, nested phases subtracted, so the shares add up to the whole."""
import time

from tokenbench.harness.run.phases import PhaseClock


def test_nested_phase_is_charged_to_itself_not_to_its_parent():
    clock = PhaseClock()
    t0 = time.perf_counter()
    with clock("cell"):
        time.sleep(0.02)
        with clock("model"):
            time.sleep(0.03)
    whole = time.perf_counter() - t0
    assert clock.seconds["model"] >= 0.03
    assert 0.02 <= clock.seconds["cell"] < whole - 0.03 + 1e-3
    assert abs(sum(clock.seconds.values()) - whole) < 0.01
    assert abs(sum(clock.shares().values()) - 1.0) < 1e-9
