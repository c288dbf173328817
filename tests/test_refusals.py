"""bench.refusals: a stretch's refusals and give-ups by reason, and the allowances behind them."""

from clockwork.bench.refusals import why, why_text


def test_refusals_are_told_by_reason_with_the_allowances_the_stretch_ended_with():
    before = {"counters": {"rejected_would_miss_deadline": 10, "rejected_for_backlog": 4, "answered_deadline_missed": 1}}
    after = {"counters": {"rejected_would_miss_deadline": 25, "rejected_for_backlog": 9, "answered_deadline_missed": 1,
                          "rejected_stale": 2},
             "scheduler": {"reply_ms": 13.2, "dispatch_ms": 4.4, "finish_tail_ms": 0.0, "admission_headroom": 0.05}}
    reasons, allowances = why(before, after)
    assert reasons == {"behind the queue": 5, "even on an idle device": 10, "waited too long to be read": 2}
    assert allowances == {"dispatch_ms": 4.4, "finish_tail_ms": 0.0, "reply_ms": 13.2, "admission_headroom": 0.05}
    assert why_text(reasons, {"reply_ms": 13.2}) == ("; 5 behind the queue; 10 even on an idle device; "
                                                     "2 waited too long to be read; reply_ms 13.2")
    dry_run = {"counters": {"dry_run_refused": 40, "dry_run_refused_for_backlog": 38, "dry_run_refused_met_slo": 31}}
    assert why({}, dry_run)[0] == {"dry run: would have refused": 40, "dry run: of those, answered in SLO": 31}
    assert why({}, {"workers": []}) == ({}, {})  # a target without a controller (STATUS {}) has neither
    # The EXECs that ran over twice their planned time: told beside the give-ups they cause.
    assert why({}, {"counters": {"exec_overran": 3}})[0] == {"EXECs over twice their planned time": 3}
    # Where the lanes idled while work waited, over every device, in milliseconds.
    def lanes(*idle_ms):
        return {"workers": [{"lane_idle_controller_ms": c, "lane_idle_worker_ms": w} for c, w in idle_ms]}
    assert why(lanes((1.0, 0.0), (0.0, 0.5)), lanes((41.0, 2.5), (9.0, 0.7)))[0] == {
        "ms lanes idled, the work not yet at the worker": 49, "ms lanes idled, the EXEC at the worker": 3}
    assert why_text({}, {}) == ""
