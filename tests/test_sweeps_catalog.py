"""ASHA's decisions in the catalog, on real SQLite and a real PostgreSQL: trials reaching a rung at once are judged one
after the other, each against the decisions stored before it, and asking again gives the stored decision."""

import threading

import pytest

from app.db.engine import Database
from app.sweeps import asha, catalog
from app.sweeps.judge import trial_judge


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    url = f"sqlite:///{tmp_path}/catalog.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    database = Database(url)
    database.migrate()
    yield database
    database.dispose()


def add_sweep(db: Database, sweep: str, trials: int, *, early_stop: dict | None) -> None:
    spec = {"metric": "val_accuracy", "early_stop": early_stop}
    catalog.add(db, sweep={"id": sweep, "name": None, "spec": spec, "created_at": "2026-12-05T00:00:00.000Z"},
                trials=[{"trial": n, "version": f"{sweep}-t{n}", "config": {}, "seed": 0}
                        for n in range(1, trials + 1)])


def test_trials_reaching_a_rung_at_once_are_judged_one_after_the_other(db):
    add_sweep(db, "s", 12, early_stop={"type": "asha", "min_epochs": 1, "reduction_factor": 3})
    metrics = {n: round(0.05 * ((n * 7) % 12), 2) for n in range(1, 13)}  # distinct, in no particular order
    start, answers = threading.Barrier(12), {}

    def reach(trial: int) -> None:
        start.wait()
        answers[trial] = catalog.decide(db, sweep="s", trial=trial, rung=0, epoch=1, metric=metrics[trial],
                                        reduction_factor=3, higher_is_better=True)

    threads = [threading.Thread(target=reach, args=(n,)) for n in metrics]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    stored = catalog.decisions(db, "s")
    assert sorted(d["trial"] for d in stored) == list(range(1, 13))
    # each stored decision is ASHA's on the decisions stored before it, and the caller got that one
    for i, made in enumerate(stored):
        before = {d["trial"]: d["metric"] for d in stored[:i]}
        assert made["decision"] == asha.decide(trial=made["trial"], metric=made["metric"], reached=before,
                                               reduction_factor=3)
        assert answers[made["trial"]] == (made["decision"], i + 1)
    again = catalog.decide(db, sweep="s", trial=stored[5]["trial"], rung=0, epoch=1, metric=0.0, reduction_factor=3,
                           higher_is_better=True)
    assert again == (stored[5]["decision"], 6) and len(catalog.decisions(db, "s")) == 12  # a resumed attempt


def test_the_judge_of_a_trial_asks_at_its_rungs_only_and_says_why_it_stops(db):
    add_sweep(db, "asha", 2, early_stop={"type": "asha", "min_epochs": 1, "reduction_factor": 2})
    add_sweep(db, "plain", 1, early_stop=None)
    assert trial_judge(db, "plain-t1", epochs=9) is None and trial_judge(db, "someone-elses-job", epochs=9) is None
    first, second = (trial_judge(db, f"asha-t{n}", epochs=4) for n in (1, 2))  # rungs at epochs 1 and 2
    assert first({"epoch": 1, "val_accuracy": 0.5}) is None
    reason = second({"epoch": 1, "val_accuracy": 0.4})
    assert reason.startswith("ASHA stopped trial 2 of sweep asha at rung 0 (epoch 1)")
    assert "val_accuracy 0.4" in reason and "top 1/2 of the 2 trials" in reason
    assert first({"epoch": 2, "val_accuracy": 0.7}) is None and first({"epoch": 3, "val_accuracy": 0.1}) is None
    assert [(d["trial"], d["rung"], d["epoch"], d["decision"]) for d in catalog.decisions(db, "asha")] == [
        (1, 0, 1, "continue"), (2, 0, 1, "stop"), (1, 1, 2, "continue")]
