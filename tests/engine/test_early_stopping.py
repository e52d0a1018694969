"""Early stopping counts validations without improvement and survives a state round trip."""

from engine.early_stopping import EarlyStopping


def test_stops_after_patience_without_improvement() -> None:
    stopper = EarlyStopping(patience=2)
    assert stopper.step(1.0, 0)
    assert not stopper.step(1.0, 1) and not stopper.stopped  # equal is no improvement
    assert stopper.step(0.5, 2) and stopper.counter == 0
    assert not stopper.step(0.6, 3)
    assert not stopper.step(0.7, 4)
    assert stopper.stopped and stopper.best == 0.5 and stopper.best_epoch == 2


def test_state_round_trip() -> None:
    stopper = EarlyStopping(patience=3)
    stopper.step(1.0, 0)
    stopper.step(2.0, 1)
    again = EarlyStopping(patience=3)
    again.load_state_dict(stopper.state_dict())
    assert again == stopper
