"""Progress lines: timestamps, durations, ETA, and a log that a refused run never writes."""

import re

from raytt.progress import Console, duration, eta, stamp


def test_every_line_of_a_message_is_stamped():
    lines = stamp("a\nb", when=0).splitlines()
    assert len(lines) == 2 and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  [ab]$", line) for line in lines)


def test_durations_and_eta():
    assert [duration(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]
    assert eta(10.0, 0, 100) is None and eta(10.0, 25, 100) == 30.0 and eta(10.0, 100, 100) == 0.0


def test_a_held_log_writes_nothing_until_released(tmp_path, capsys):
    log = tmp_path / "run" / "train.log"
    console = Console(log, hold=True)
    console("checking the data")
    assert not log.parent.exists(), "a run refused before it starts leaves nothing behind"
    console.release()
    console("step 1/10")
    kept = log.read_text().splitlines()
    assert [line.split("  ", 1)[1] for line in kept] == ["checking the data", "step 1/10"]
    assert capsys.readouterr().out.count("  ") == 2


def test_a_prefix_names_the_trial(tmp_path, capsys):
    Console(tmp_path / "t.log", prefix="[trial_1] ")("epoch 1/2")
    assert "[trial_1] epoch 1/2" in capsys.readouterr().out and "[trial_1]" in (tmp_path / "t.log").read_text()
