"""RegroupRecords.start: nothing an earlier run wrote is lost, and files follow the umask."""
import json
import os
import stat

from dgn_plugins.training.records import RegroupRecords


def write(path, steps):
    path.write_text("".join(json.dumps({"step": s, "group_id": {}, "reports": []}) + "\n" for s in steps))


def steps_in(path):
    return [r["step"] for r in RegroupRecords(path).read()]


def test_fresh_run_keeps_the_old_file_beside_it(tmp_path):
    path = tmp_path / "dgn_groups.jsonl"
    write(path, [2, 4])
    old_text = path.read_text()
    records = RegroupRecords(path)
    assert records.start(-1) == 0
    assert steps_in(path) == []
    assert records.set_aside is not None and os.path.dirname(records.set_aside) == str(tmp_path)
    assert records.set_aside.endswith(".jsonl")  # plot_groups --records reads it as it is
    assert open(records.set_aside).read() == old_text
    assert "2 regroup record(s) (steps 2..4)" in records.set_aside_warning()
    # A second fresh run keeps that file too, under another name.
    write(path, [6])
    again = RegroupRecords(path)
    again.start(-1)
    assert again.set_aside != records.set_aside and steps_in(again.set_aside) == [6]
    assert steps_in(records.set_aside) == [2, 4]


def test_resume_drops_only_later_records_and_keeps_them_aside(tmp_path):
    path = tmp_path / "dgn_groups.jsonl"
    write(path, [2, 4, 6])
    records = RegroupRecords(path)
    assert records.start(4) == 2
    assert steps_in(path) == [2, 4] and steps_in(records.set_aside) == [2, 4, 6]
    assert records.dropped_steps == [6]


def test_nothing_dropped_nothing_set_aside(tmp_path):
    path = tmp_path / "dgn_groups.jsonl"
    write(path, [2, 4])
    records = RegroupRecords(path)
    assert records.start(4) == 2
    assert records.set_aside is None and records.set_aside_warning() is None
    assert [p.name for p in tmp_path.iterdir()] == ["dgn_groups.jsonl"]


def test_rewritten_file_follows_the_umask(tmp_path):
    path = tmp_path / "dgn_groups.jsonl"
    for umask, expected in ((0o022, 0o644), (0o002, 0o664)):
        write(path, [2, 4])
        previous = os.umask(umask)
        try:
            RegroupRecords(path).start(2)
        finally:
            os.umask(previous)
        assert stat.S_IMODE(os.stat(path).st_mode) == expected
