"""The rotating TSV log behind the request (and action) logs."""

from __future__ import annotations

from clockwork.common.rotating_log import NullLog, TsvLog, open_tsv

S = 1_000_000_000


def test_rows_are_buffered_until_a_flush_is_due(tmp_path):
    log = TsvLog(tmp_path / "logs" / "r.tsv", ["a", "b"], max_bytes=1 << 20, flush_interval_ns=S)
    log.maybe_flush(0)  # nothing buffered: nothing to do
    log.write((1, "x"))
    assert (tmp_path / "logs" / "r.tsv").read_text() == "a\tb\n"  # the header is there at once
    log.maybe_flush(0)
    log.write((2, "tab\there\nnewline"))
    log.maybe_flush(S // 2)  # not due yet
    assert (tmp_path / "logs" / "r.tsv").read_text() == "a\tb\n1\tx\n"
    log.close()
    assert (tmp_path / "logs" / "r.tsv").read_text() == "a\tb\n1\tx\n2\ttab here newline\n"


def test_rotation_keeps_the_newest_files(tmp_path):
    path = tmp_path / "r.tsv"
    log = TsvLog(path, ["n", "payload"], max_bytes=200, backups=2)
    for n in range(40):
        log.write((n, "x" * 20))
        log.flush()
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["r.tsv", "r.tsv.1", "r.tsv.2"]
    for p in tmp_path.iterdir():
        lines = p.read_text().splitlines()
        assert lines[0] == "n\tpayload" and p.stat().st_size <= 200 + 30  # each file restarts with a header
    newest = [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]
    oldest_kept = int((tmp_path / "r.tsv.2").read_text().splitlines()[1].split("\t")[0])
    assert newest[-1] == 39 and oldest_kept > 0  # the very first rows were deleted


def test_no_backups_means_truncate_and_an_empty_path_means_off(tmp_path):
    log = TsvLog(tmp_path / "r.tsv", ["n"], max_bytes=50, backups=0)
    for n in range(30):
        log.write((n,))
        log.flush()
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["r.tsv"]
    off = open_tsv("", ["n"])
    assert isinstance(off, NullLog) and not off.enabled
    off.write((1,))
    off.maybe_flush(0)
    off.close()


def test_appending_to_an_existing_log_does_not_repeat_the_header(tmp_path):
    for n in range(2):
        log = TsvLog(tmp_path / "r.tsv", ["n"])
        log.write((n,))
        log.close()
    assert (tmp_path / "r.tsv").read_text() == "n\n0\n1\n"


def test_the_action_log_has_one_row_per_finished_action(tmp_path):
    import numpy as np

    from clockwork.bench.models import profile_json
    from clockwork.bench.procs import WorkerSpec, cluster
    from clockwork.controller.metrics import ACTION_LOG_COLUMNS

    log = tmp_path / "actions.tsv"
    with cluster(tmp_path, [WorkerSpec("emu", "emulated")], controller_settings=[f'action_log_path="{log}"']) as c:
        with c.client() as cw:
            cw.upload(profile_json(), "m", format="profile")
            for _ in range(3):
                cw.infer("m", {"data": np.zeros((1, 16), np.float32)}, slo_ms=200)
    lines = log.read_text().splitlines()
    assert lines[0].split("\t") == list(ACTION_LOG_COLUMNS)
    rows = [dict(zip(ACTION_LOG_COLUMNS, line.split("\t"))) for line in lines[1:]]
    assert [r["kind"] for r in rows].count("load") == 1 and [r["kind"] for r in rows].count("exec") == 3
    assert all(r["status"] == "OK" and int(r["measured_ns"]) > 0 for r in rows)
